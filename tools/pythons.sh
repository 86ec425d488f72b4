#!/usr/bin/env bash
# Run the test suite and `ctxlab check` on Python 3.14 (thread_inherit_context
# off, then on) and 3.15, which pyenv does not offer here: Debian's `forky`
# suite packages both, so we build a minimal Debian chroot holding them.
# A developer's check, not CI's: it needs root (debootstrap, chroot, mount).
#
#   tools/pythons.sh [CHROOT_DIR]      (default $FORKY, else /work/chroots/forky)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
chroot_dir=${1:-${FORKY:-/work/chroots/forky}}
pythons="python3.14 python3.15"

# The Debian mirror this machine's apt already uses (first non-security one).
debian_mirror() {
    {
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'
    } | grep -v -e security -e '^$' | grep '/debian/\?$' | head -n 1
}

build_chroot() {
    local mirror scripts=/usr/share/debootstrap/scripts
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || { echo "no Debian mirror found in the apt configuration" >&2; exit 2; }
    command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
    # Older debootstrap releases do not know forky yet; it bootstraps like sid.
    [ -e "$scripts/forky" ] || ln -s sid "$scripts/forky"
    local packages=ca-certificates
    for python in $pythons; do packages="$packages,$python,$python-venv"; done
    echo "building $chroot_dir (Debian forky) ..."
    rm -rf "$chroot_dir.tmp"
    debootstrap --variant=minbase --include="$packages" forky "$chroot_dir.tmp" "$mirror" >"$chroot_dir.log" 2>&1 \
        || { echo "debootstrap failed; see $chroot_dir.log" >&2; exit 2; }
    mv "$chroot_dir.tmp" "$chroot_dir"
}

[ -x "$chroot_dir/usr/bin/python3.15" ] || build_chroot
# pip inside needs to resolve names and trust the same certificates we do.
cp /etc/resolv.conf "$chroot_dir/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$chroot_dir/etc/ssl/certs/ca-certificates.crt"

# A fresh copy of the checkout (tracked and new files, not ignored ones), so
# nothing the chroot writes lands in the working tree.
rm -rf "$chroot_dir/ctxlab"
mkdir -p "$chroot_dir/ctxlab"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) |
    tar -xf - -C "$chroot_dir/ctxlab"

if ! mountpoint -q "$chroot_dir/proc"; then
    mount -t proc proc "$chroot_dir/proc"
    trap 'umount "$chroot_dir/proc"' EXIT
fi

in_chroot() { chroot "$chroot_dir" env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 NO_COLOR=1 "$@"; }

failed=""
step() { # step LABEL COMMAND: run it in /ctxlab, note a failure, go on
    echo "== $1"
    in_chroot sh -c "cd /ctxlab && $2" || failed="$failed\n  $1"
}
for python in $pythons; do
    venv=/venvs/$python
    in_chroot $python -m venv --clear $venv
    in_chroot $venv/bin/python -m pip install --quiet --disable-pip-version-check -e '/ctxlab[test]'
    # The environment variable, unlike -X, reaches the subprocesses tests start.
    flags="PYTHON_THREAD_INHERIT_CONTEXT=0"
    [ $python = python3.14 ] && flags="$flags PYTHON_THREAD_INHERIT_CONTEXT=1"
    for flag in $flags; do
        step "$python $flag: tests" "$flag $venv/bin/python -m pytest -q -p no:cacheprovider"
        for serving in "--server both" "--server both --loop asyncio --http h11" "--server hypercorn" "--server granian"; do
            step "$python $flag: ctxlab check $serving" "$flag $venv/bin/ctxlab check $serving"
        done
    done
done
[ -z "$failed" ] || { printf "failed:$failed\n"; exit 1; }
echo "all passed on: $pythons"
