#!/bin/bash
# The verifier: the attempt's reward, 1 (pass) or 0 (fail), in /logs/verifier/reward.txt.
check() {
    [ "$(cat /repo/notes.txt 2>/dev/null)" = "$(printf 'remember the milk\nship on friday')" ]
}
mkdir -p /logs/verifier
if check; then echo 1; else echo 0; fi > /logs/verifier/reward.txt
