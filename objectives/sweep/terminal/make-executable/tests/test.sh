#!/bin/bash
# The verifier: the attempt's reward, 1 (pass) or 0 (fail), in /logs/verifier/reward.txt.
check() {
    [ -x /app/run.sh ] && [ "$(cat /app/done.txt 2>/dev/null)" = done ]
}
mkdir -p /logs/verifier
if check; then echo 1; else echo 0; fi > /logs/verifier/reward.txt
