#!/bin/bash
fuser -k -n tcp 8080
sleep 1
