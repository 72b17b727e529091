#!/usr/bin/env bash
# Installs the freedesktop launcher and icon for the current user (Linux desktops).
#
#   packaging/install-desktop-entry.sh [BUNDLE]
#
# BUNDLE: a PyInstaller build folder (dist/emgui) or its emgui program; the launcher then starts the
# bundle, with the icon the bundle carries. Without it, the launcher starts the `emgui` on PATH (a pip or
# venv install) with the repository's icon.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
icons=$here/../resources/icons
if [ $# -gt 0 ]; then
    target=$1
    [ -d "$target" ] && target=$target/emgui
    [ -x "$target" ] || { echo "install-desktop-entry: $target is not an emgui program" >&2; exit 1; }
    target=$(cd "$(dirname "$target")" && pwd)/$(basename "$target")
    [ -d "$(dirname "$target")/_internal/resources/icons" ] && icons=$(dirname "$target")/_internal/resources/icons
else
    target=$(command -v emgui || echo emgui)
fi
data=${XDG_DATA_HOME:-$HOME/.local/share}
apps=$data/applications
mkdir -p "$apps" "$data/icons/hicolor/scalable/apps" "$data/icons/hicolor/256x256/apps"
cp "$icons/emgui.svg" "$data/icons/hicolor/scalable/apps/emgui.svg"
cp "$icons/emgui.png" "$data/icons/hicolor/256x256/apps/emgui.png"
# Exec takes the program's absolute path, quoted as the desktop entry spec asks (a space needs the quotes;
# " ` $ \\ are backslash-escaped inside them, then every backslash doubled; % is written %%).
quoted=$(printf '%s' "$target" | sed -e 's/[\\"`$]/\\&/g' -e 's/\\/\\\\/g' -e 's/%/%%/g')
while IFS= read -r line; do
    case $line in
        Exec=emgui*) printf 'Exec="%s"%s\n' "$quoted" "${line#Exec=emgui}" ;;
        TryExec=emgui) printf 'TryExec=%s\n' "$(printf '%s' "$target" | sed 's/\\/\\\\/g')" ;;
        *) printf '%s\n' "$line" ;;
    esac
done < "$here/emgui.desktop" > "$apps/emgui.desktop"
if command -v update-desktop-database >/dev/null; then update-desktop-database "$apps" || true; fi
if command -v gtk-update-icon-cache >/dev/null; then gtk-update-icon-cache -q "$data/icons/hicolor" 2>/dev/null || true; fi
echo "installed $apps/emgui.desktop (starts $target)"
