#!/bin/sh
# The config (kept unless purged) and the spool in /var/lib/smtpbridge
# stay: queued mail is not thrown away with the package.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
