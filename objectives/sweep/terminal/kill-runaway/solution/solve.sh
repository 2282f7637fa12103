#!/bin/bash
pkill -f /usr/local/bin/cryptominer
sleep 1
