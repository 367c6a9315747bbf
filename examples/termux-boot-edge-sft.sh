#!/data/data/com.termux/files/usr/bin/sh
# Termux:Boot script: start the edge-sft personalization daemon when the phone boots.
# Install: mkdir -p ~/.termux/boot && cp examples/termux-boot-edge-sft.sh ~/.termux/boot/
#          chmod +x ~/.termux/boot/termux-boot-edge-sft.sh
# Android kills background apps that hold no wake lock; termux-wake-lock keeps Termux alive.
# On Android /sys/class/power_supply is usually readable; if it is not, the daemon treats the
# device as having no battery: set triggers.require_ac = false deliberately and rely on the
# time window instead (see docs/daemon.md).
termux-wake-lock
umask 077
cd "$HOME/edge-sft" || exit 1
exec nice -n 19 ./edge-sft daemon --config edge-sft.toml >> state-daemon.log 2>&1
