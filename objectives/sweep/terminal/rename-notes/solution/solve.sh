#!/bin/bash
cd /data/notes && for f in *.txt; do mv "$f" "${f%.txt}.md"; done
