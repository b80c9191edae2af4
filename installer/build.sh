#!/usr/bin/env bash
# Build the self-contained `scanfort` bundle (PyInstaller --onedir) and the Debian package.
#
#   installer/build.sh [bundle|deb|all]        default: all
#
# Environment: PYTHON (default .venv/bin/python, needs the `dev` extra for PyInstaller),
# OUT (default build/dist), WORK (default build/pyinstaller). Produces
#   $OUT/scanfort/scanfort                     the bundle (copy the whole folder)
#   $OUT/scanfort_<version>_<arch>.deb         the package (needs dpkg-deb)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/build/dist}
WORK=${WORK:-$ROOT/build/pyinstaller}
DEBIAN_DIR=$ROOT/installer/debian
PREFIX=/opt/scanfort
CONF=/etc/scanfort/agent.toml

bundle() {
    "$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
        --distpath "$OUT" --workpath "$WORK" "$ROOT/installer/scanfort.spec"
    "$OUT/scanfort/scanfort" --version
}

# The writable paths of the default config, for the unit the package ships.
# (`scanfort service install` regenerates the unit from the real config later.)
default_paths() {
    "$PY" - "$DEBIAN_DIR/agent.toml" <<'PYEOF'
import sys, tomllib
with open(sys.argv[1], "rb") as fh:
    cfg = tomllib.load(fh)
paths = [cfg["spool_dir"], cfg["log_dir"]]
for folder in cfg.get("folders", []):
    paths += [folder["path"]] + ([folder["move_to"]] if "move_to" in folder else [])
for dest in cfg.get("destinations", {}).values():
    if dest.get("kind") == "folder":
        paths.append(dest["path"])
print("\n".join(paths))
PYEOF
}

deb() {
    local bundle_dir=$OUT/scanfort stage=$OUT/deb-root
    [ -x "$bundle_dir/scanfort" ] || { echo "build.sh: build the bundle first" >&2; exit 1; }
    local version arch glibc
    version=$("$bundle_dir/scanfort" --version | awk '{print $2}')
    arch=$(dpkg --print-architecture)
    glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')

    rm -rf "$stage"
    install -d -m 0755 "$stage/DEBIAN" "$stage/opt" "$stage/usr/bin" \
        "$stage/lib/systemd/system" "$stage/etc/scanfort" "$stage/usr/share/doc/scanfort"
    cp -a "$bundle_dir" "$stage$PREFIX"
    chmod -R u=rwX,go=rX "$stage$PREFIX"
    ln -s "$PREFIX/scanfort" "$stage/usr/bin/scanfort"
    install -m 0640 "$DEBIAN_DIR/agent.toml" "$stage$CONF"

    local rw=()
    while IFS= read -r p; do rw+=(--read-write "$p"); done < <(default_paths)
    "$bundle_dir/scanfort" service unit --no-load --exec "$PREFIX/scanfort" --config "$CONF" \
        "${rw[@]}" > "$stage/lib/systemd/system/scanfort.service"
    chmod 0644 "$stage/lib/systemd/system/scanfort.service"
    printf 'ScanFort %s: see the README of the source repository.\n' "$version" \
        > "$stage/usr/share/doc/scanfort/README"
    chmod 0644 "$stage/usr/share/doc/scanfort/README"

    local size
    size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@GLIBC@/$glibc/" \
        -e "s/@SIZE@/$size/" "$DEBIAN_DIR/control.in" > "$stage/DEBIAN/control"
    install -m 0644 "$DEBIAN_DIR/conffiles" "$stage/DEBIAN/conffiles"
    install -m 0755 "$DEBIAN_DIR/postinst" "$DEBIAN_DIR/prerm" "$DEBIAN_DIR/postrm" "$stage/DEBIAN/"

    # --root-owner-group: every file root:root without needing fakeroot.
    dpkg-deb --root-owner-group -Zgzip --build "$stage" "$OUT/scanfort_${version}_${arch}.deb"
}

case "${1:-all}" in
    bundle) bundle ;;
    deb) deb ;;
    all) bundle; deb ;;
    *) echo "usage: installer/build.sh [bundle|deb|all]" >&2; exit 2 ;;
esac
