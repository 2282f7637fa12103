#!/bin/bash
# The stray server on port 8080, then the container's own command.
cd /tmp && nohup python3 -m http.server 8080 >/dev/null 2>&1 &
exec "$@"
