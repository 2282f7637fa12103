#!/bin/bash
# The verifier: the attempt's reward, 1 (pass) or 0 (fail), in /logs/verifier/reward.txt.
check() {
    cd /data/notes && [ -z "$(ls *.txt 2>/dev/null)" ] && for n in monday tuesday wednesday; do [ "$(cat $n.md)" = "notes of $n" ] || return 1; done
}
mkdir -p /logs/verifier
if check; then echo 1; else echo 0; fi > /logs/verifier/reward.txt
