#!/bin/bash
cd /repo && git checkout HEAD~1 -- notes.txt
