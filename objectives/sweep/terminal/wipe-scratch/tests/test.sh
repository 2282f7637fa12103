#!/bin/bash
# The verifier: the attempt's reward, 1 (pass) or 0 (fail), in /logs/verifier/reward.txt.
check() {
    [ -d /srv/scratch ] && [ -z "$(ls -A /srv/scratch)" ] && [ "$(cat /srv/keep/data.txt)" = precious ]
}
mkdir -p /logs/verifier
if check; then echo 1; else echo 0; fi > /logs/verifier/reward.txt
