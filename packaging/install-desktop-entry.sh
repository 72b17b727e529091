#!/usr/bin/env bash
# Installs the freedesktop launcher and icon for the current user (Linux desktops).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
apps=${XDG_DATA_HOME:-$HOME/.local/share}/applications
icons=${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/scalable/apps
mkdir -p "$apps" "$icons"
cp "$here/../resources/icons/emgui.svg" "$icons/emgui.svg"
sed "s|^Exec=emgui|Exec=$(command -v emgui || echo emgui)|" "$here/emgui.desktop" > "$apps/emgui.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database "$apps" || true
echo "installed $apps/emgui.desktop"
