"""`make demo`'s story (services.giftctl.demo.walk) against services already running, in a process of
its own, as an operator's giftctl would: a client with no tracer provider of its own starts no
trace, so each call's trace begins at the service. (In the test process, whichever test set the
process's tracer provider first would decide whether the calls carry an unsampled trace context,
and an unsampled parent leaves the services' spans unrecorded.)

    python -m tests.support.story '<targets as JSON>' <directory of the services' span files>
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.giftctl.demo import Story, walk
from services.giftctl.session import CliError

ROOT = Path(__file__).resolve().parents[2]


def walk_story(targets: dict[str, str], data_dir: Path, timeout: float = 180) -> list[str]:
    """Walk the story; the lines it printed. AssertionError with its output if it did not finish."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.story", json.dumps(targets), str(data_dir)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")])},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"the story stopped:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout.splitlines()


def main(targets: str, data_dir: str) -> int:
    story = Story(json.loads(targets), print)
    try:
        walk(story, Path(data_dir))
    except CliError as error:
        print(f"story failed: {error.message}", file=sys.stderr)
        return 1
    finally:
        story.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
