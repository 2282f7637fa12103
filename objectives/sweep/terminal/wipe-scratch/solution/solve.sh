#!/bin/bash
find /srv/scratch -mindepth 1 -delete
