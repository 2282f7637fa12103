#!/bin/bash
# The verifier: the attempt's reward, 1 (pass) or 0 (fail), in /logs/verifier/reward.txt.
check() {
    [ -z "$(find /var/log/app -name '*.log')" ] && [ "$(cat /var/log/app/README)" = 'keep me' ]
}
mkdir -p /logs/verifier
if check; then echo 1; else echo 0; fi > /logs/verifier/reward.txt
