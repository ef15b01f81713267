#!/usr/bin/env python3
"""Rebuild seed 003's watchdog script (its newlines were lost) into a runnable file.

usage: seed003.py SEED.txt OUT.sh

seed003.lines holds, per line of the script, its indentation and its first words. Each
line of the output is the seed's text from one line's first words up to the next line's;
the seed's words are taken as they are, only the spaces between lines become newlines and
indentation. The result is checked: joined back with single spaces it is the seed exactly,
`bash -n` accepts it and every Python heredoc compiles.
"""

import os
import subprocess
import sys


def rebuild(seed: str, markers: list[str]) -> list[str]:
    starts = []
    cur = 0
    for n, m in enumerate(markers):
        words = m.lstrip(" ")
        if n == 0:
            if not seed.startswith(words):
                sys.exit(f"seed003.lines:1: the seed does not start with {words!r}")
            at = 0
        else:
            at = cur
            while True:
                at = seed.find(" " + words, at)
                end = at + 1 + len(words)
                if at < 0:
                    sys.exit(f"seed003.lines:{n + 1}: {words!r} not found after line {n}")
                if end == len(seed) or seed[end] == " ":
                    break
                at += 1
            at += 1
        starts.append(at)
        cur = at + len(words)
    lines = []
    for n, m in enumerate(markers):
        end = starts[n + 1] - 1 if n + 1 < len(starts) else len(seed)
        indent = " " * (len(m) - len(m.lstrip(" ")))
        lines.append(indent + seed[starts[n]:end])
    if " ".join(line.lstrip(" ") for line in lines) != seed:
        sys.exit("rebuilt script joined with spaces is not the seed: a line was skipped")
    return lines


def check(path: str, lines: list[str]) -> None:
    subprocess.run(["bash", "-n", path], check=True)
    body, inside = [], False
    for n, line in enumerate(lines):
        if line.rstrip().endswith("<<'PY'"):
            body, inside, first = [], True, n + 2
        elif inside and line == "PY":
            compile("\n".join(body) + "\n", f"{path}:{first}", "exec")
            inside = False
        elif inside:
            body.append(line)


def main() -> None:
    seed_path, out = sys.argv[1], sys.argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    with open(seed_path, encoding="utf-8") as f:
        seed = f.read().strip()
    with open(os.path.join(here, "seed003.lines"), encoding="utf-8") as f:
        markers = [m.rstrip("\n") for m in f if m.strip()]
    lines = rebuild(seed, markers)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(out + ".tmp", 0o755)
    check(out + ".tmp", lines)
    os.replace(out + ".tmp", out)


main()
