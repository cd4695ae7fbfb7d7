#!/usr/bin/env bash
# Install the tools the tests use beside Python packages:
# - bubblewrap (Debian package, when we are root and it is missing), for the sandbox tests;
# - openssh-server (the same way), for the tests of `missionctl --remote` against a local sshd;
# - the pinned agent CLIs of the codex, acp and claude runners, into the project-local folder .cache/npm
#   (git-ignored). The runners find them there when they are not on PATH.
# Usage: scripts/install-tools.sh   (needs node and npm; does nothing when everything is there)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q bubblewrap >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }; } ||
    echo "install-tools: bubblewrap not installed; the sandbox tests will check the refusal message only" >&2
fi
# OpenSSH's server (Debian package, when we are root and it is missing), for the tests of `--remote` against sshd
# on 127.0.0.1 (the tests start their own sshd, with keys of their own, on a free port).
if ! [ -x /usr/sbin/sshd ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q --no-install-recommends openssh-server >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 &&
      apt-get install -y -q --no-install-recommends openssh-server >/dev/null 2>&1; }; } ||
    echo "install-tools: openssh-server not installed; the --remote tests are skipped" >&2
fi
CODEX_VERSION=0.171.0          # @openai/codex: `codex app-server`
CODEX_MIN_VERSION=0.169.0      # the oldest @openai/codex the codex runner accepts, in .cache/npm-codex-VERSION
CODEX_ACP_VERSION=0.16.0       # @zed-industries/codex-acp: the ACP agent the acp runner is tested with
CLAUDE_VERSION=2.1.332         # @anthropic-ai/claude-code: `claude -p` in stream-json mode, the claude runner
PREFIX=.cache/npm
BIN="$PREFIX/node_modules/.bin"
if ! command -v npm >/dev/null 2>&1; then
  echo "install-tools: npm not found: install Node.js 18+ (apt-get install nodejs npm) to use the codex, acp and claude runners" >&2
  exit 0
fi
installed() {  # installed PACKAGE VERSION
  [ -f "$PREFIX/node_modules/$1/package.json" ] &&
    node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
      "$PWD/$PREFIX/node_modules/$1/package.json" "$2"
}
# The oldest accepted Codex in a folder of its own: a test runs a real flow with it.
CODEX_MIN_PREFIX=".cache/npm-codex-$CODEX_MIN_VERSION"
if ! [ -x "$CODEX_MIN_PREFIX/node_modules/.bin/codex" ]; then
  mkdir -p "$CODEX_MIN_PREFIX"
  npm install --prefix "$CODEX_MIN_PREFIX" --no-audit --no-fund --loglevel=error "@openai/codex@$CODEX_MIN_VERSION" ||
    echo "install-tools: codex $CODEX_MIN_VERSION not installed; its test is skipped" >&2
fi
if installed @openai/codex "$CODEX_VERSION" && installed @zed-industries/codex-acp "$CODEX_ACP_VERSION" &&
  installed @anthropic-ai/claude-code "$CLAUDE_VERSION" &&
  [ -x "$BIN/codex" ] && [ -x "$BIN/codex-acp" ] && [ -x "$BIN/claude" ]; then
  echo "install-tools: codex $CODEX_VERSION, codex-acp $CODEX_ACP_VERSION and claude $CLAUDE_VERSION are in $PREFIX"
  exit 0
fi
mkdir -p "$PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
  "@openai/codex@$CODEX_VERSION" "@zed-industries/codex-acp@$CODEX_ACP_VERSION" \
  "@anthropic-ai/claude-code@$CLAUDE_VERSION"
"$BIN/codex" --version
DISABLE_AUTOUPDATER=1 "$BIN/claude" --version
echo "install-tools: codex $CODEX_VERSION, codex-acp $CODEX_ACP_VERSION and claude $CLAUDE_VERSION installed in $PREFIX"
