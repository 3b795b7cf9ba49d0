#!/bin/sh
# Provisioning of the Vagrant box (run as root by `vagrant up`): the README's install, without its
# demo run, then the workspace of the laptop path in /srv/app. Arguments: the first and last port of
# the routers' port range that the Vagrantfile forwards.
#   SANDBOX_SRC (/sandbox), BOX_APP (/srv/app), BOX_PROFILE_D (/etc/profile.d), BOX_INSTALL (1) and
#   SANDBOX (sandbox: the command) are for tests/unit/test_vagrant.py.
set -eu
FIRST=$1
LAST=$2
SRC=${SANDBOX_SRC:-/sandbox}
APP=${BOX_APP:-/srv/app}
PROFILE_D=${BOX_PROFILE_D:-/etc/profile.d}
SANDBOX=${SANDBOX:-sandbox}

if [ "${BOX_INSTALL:-1}" = 1 ]; then
    (cd "$SRC" && ./install.sh --no-run)
fi

# once: a later `vagrant provision` keeps the workspace as it was edited
if [ ! -e "$APP/sandbox.yaml" ]; then
    $SANDBOX init "$APP" --name app
    # the box's routers listen on all its interfaces: Vagrant forwards the laptop's ports to them
    sed -i 's/^  listen: 127.0.0.1$/  listen: 0.0.0.0      # the box: reached through forwarded ports/' "$APP/profiles/prod.yaml"
    printf '\nrouters: {port_range: [%s, %s]}  # forwarded to the laptop by the Vagrantfile\n' \
        "$FIRST" "$LAST" >>"$APP/sandbox.yaml"
fi

# `vagrant ssh -c 'sandbox ...'` runs as the vagrant user: sandbox itself runs as root, in $APP
cat >"$PROFILE_D/sandbox.sh" <<PROFILE
# written by sandbox's vagrant/provision.sh: sandbox runs as root, on the workspace $APP
export SANDBOX_WORKSPACE=$APP
if [ "\$(id -u)" != 0 ]; then
    sandbox() { sudo SANDBOX_WORKSPACE=$APP /usr/local/bin/sandbox "\$@"; }
fi
PROFILE
echo ">> the box is ready: vagrant ssh -c 'sandbox up dev-me --wait'"
