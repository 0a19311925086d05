#!/bin/sh
# The system user the unit runs as, before the files that name its group.
set -e
if ! getent group smtpbridge >/dev/null 2>&1; then
	groupadd --system smtpbridge
fi
if ! getent passwd smtpbridge >/dev/null 2>&1; then
	useradd --system --gid smtpbridge --home-dir /var/lib/smtpbridge --no-create-home \
		--shell /usr/sbin/nologin --comment "smtpbridge" smtpbridge
fi
