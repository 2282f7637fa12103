#!/bin/bash
find /var/log/app -name '*.log' -type f -delete
