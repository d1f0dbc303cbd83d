// Drives a running aipower gateway with the official openai Node SDK and prints one JSON object of results.
// Env: AIPOWER_BASE_URL (".../v1"), AIPOWER_KEY, AIPOWER_MODEL. Used by tests/e2e/test_node_sdk.py.
import OpenAI from "openai";

const baseURL = process.env.AIPOWER_BASE_URL;
const apiKey = process.env.AIPOWER_KEY;
const model = process.env.AIPOWER_MODEL;
if (!baseURL || !apiKey || !model) {
  throw new Error("set AIPOWER_BASE_URL, AIPOWER_KEY and AIPOWER_MODEL");
}

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20_000 });
const messages = [{ role: "user", content: "Say hello." }];

async function nonStream() {
  const reply = await client.chat.completions.create({ model, messages });
  return {
    model: reply.model,
    content: reply.choices[0].message.content,
    finish_reason: reply.choices[0].finish_reason,
    usage: reply.usage,
  };
}

async function stream() {
  const chunks = await client.chat.completions.create({
    model,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  });
  const deltas = [];
  let usage = null;
  let finishReason = null;
  let usageChunkChoices = null;
  for await (const chunk of chunks) {
    for (const choice of chunk.choices) {
      if (choice.delta?.content) deltas.push(choice.delta.content);
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
    if (chunk.usage) {
      usage = chunk.usage;
      usageChunkChoices = chunk.choices.length;
    }
  }
  return { deltas, text: deltas.join(""), finish_reason: finishReason, usage, usage_chunk_choices: usageChunkChoices };
}

async function models() {
  const ids = [];
  for await (const entry of client.models.list()) ids.push(entry.id);
  return ids;
}

async function toolCall() {
  const reply = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "What is the weather in Paris?" }],
    tools: [
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "Current weather for a city",
          parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
        },
      },
    ],
    tool_choice: "auto",
  });
  const choice = reply.choices[0];
  return {
    finish_reason: choice.finish_reason,
    tool_calls: (choice.message.tool_calls ?? []).map((call) => ({
      id: call.id,
      type: call.type,
      name: call.function.name,
      arguments: JSON.parse(call.function.arguments),
    })),
  };
}

async function errorOf(action) {
  try {
    await action();
  } catch (error) {
    return {
      not_found: error instanceof OpenAI.NotFoundError,
      authentication: error instanceof OpenAI.AuthenticationError,
      status: error.status ?? null,
      code: error.code ?? null,
      type: error.type ?? null,
    };
  }
  return null;
}

const badKeyClient = new OpenAI({ baseURL, apiKey: "sk-aipower-not-a-real-key", maxRetries: 0, timeout: 20_000 });

const results = {
  non_stream: await nonStream(),
  stream: await stream(),
  models: await models(),
  tool_call: await toolCall(),
  unknown_model: await errorOf(() => client.chat.completions.create({ model: "nobody/no-such-model", messages })),
  bad_key: await errorOf(() => badKeyClient.chat.completions.create({ model, messages })),
};
process.stdout.write(JSON.stringify(results) + "\n");
