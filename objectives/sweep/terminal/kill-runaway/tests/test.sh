#!/bin/bash
# The verifier: the attempt's reward, 1 (pass) or 0 (fail), in /logs/verifier/reward.txt.
check() {
    ! pgrep -f '/usr/local/bin/[c]ryptominer' >/dev/null && pgrep -fx 'sleep infinity' >/dev/null
}
mkdir -p /logs/verifier
if check; then echo 1; else echo 0; fi > /logs/verifier/reward.txt
