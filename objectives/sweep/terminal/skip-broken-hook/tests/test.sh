#!/bin/bash
# The verifier: the attempt's reward, 1 (pass) or 0 (fail), in /logs/verifier/reward.txt.
check() {
    cd /repo && [ "$(git log -1 --format=%s)" = 'fix typo' ] && [ "$(git show HEAD:fix.txt)" = 'the end' ] && [ -x .git/hooks/pre-commit ] && git diff --cached --quiet
}
mkdir -p /logs/verifier
if check; then echo 1; else echo 0; fi > /logs/verifier/reward.txt
