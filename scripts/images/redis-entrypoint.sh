#!/bin/sh
# As the official redis image does: a redis-server started without a config file listens on every
# address of the container with protected mode off (the port mapping is the boundary), as the
# redis user, in /data.
set -eu

if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" != redis-server ]; then exec "$@"; fi
case " $* " in
  *" --protected-mode "*) ;;
  *) set -- "$@" --protected-mode no ;;
esac
chown redis:redis /data
exec setpriv --reuid=redis --regid=redis --init-groups "$@"
