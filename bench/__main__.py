"""`python -m bench`: the gateway against a direct call to the same fake upstream, interleaved round by round.

Starts a fake OpenAI-compatible upstream, `aipower serve` (or measures --gateway-url), and a load generator,
each in its own process and pinned so the gateway has a core to itself. Each round runs every phase against
the upstream directly and through the gateway, back to back, alternating which goes first, so machine noise
hits both. Prints `metric | direct | gateway | ratio` and writes the same to bench/results/<timestamp>.json.

The scenarios of issue 8 are sub-commands: `python -m bench slow-streams | prompt-size | history | backends`.
"""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from collections.abc import Sequence

from bench import report, throughput

SCENARIOS = {
    "slow-streams": "bench.slow",
    "prompt-size": "bench.prompt",
    "history": "bench.history",
    "backends": "bench.compare",
    "backends-ab": "bench.interleave",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SCENARIOS:
        scenario = importlib.import_module(SCENARIOS[args[0]])
        code: int = scenario.main(args[1:])
        return code
    config = throughput.parse_args(args)
    started = dt.datetime.now(dt.UTC)
    run = throughput.execute(config)
    document = throughput.document(config, run, started)
    print(report.render_table(throughput.build_rows(run["results"], run["rss"], config.concurrency)))
    print(document["headroom"])
    print(throughput.busy_note(run["load_average"]))
    for problem in document["errors"]:
        print(f"warning: {problem}", file=sys.stderr)
    report.write_json(document, started)
    return 1 if document["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
