#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this and nothing else).
#
# A fresh machine needs only rustup, Python 3 with pip, and root (or sudo) for Debian packages:
# this script first installs what the suite needs and the machine lacks, says in one line what
# that is, then runs `cargo fmt --check`, `cargo test --workspace`, clippy with `-D warnings`
# and a short smoke run of every fuzz target (FUZZING.md).
#
#   ./test.sh              everything
#   ./test.sh --no-fuzz    skip the fuzz smoke run (the slowest part on a cold machine)
#   ./test.sh --install    only install what is missing, run nothing
set -euo pipefail
cd "$(dirname "$0")"

fuzz=1
install_only=0
for arg in "$@"; do
  case "$arg" in
    --no-fuzz) fuzz=0 ;;
    --install) install_only=1 ;;
    *) echo "test.sh: unknown argument '$arg' (known: --no-fuzz, --install)" >&2; exit 2 ;;
  esac
done

# What the tests need beyond the Rust toolchain, and why:
#   iproute2      ip netns, veth, tc: the end-to-end tests build their own LANs in namespaces
#   nftables      packet-loss injection (nft numgen random; this kernel has no netem)
#   iputils-ping  the test harness's reachability checks
#   chromium      the browser-peer test drives the node's page in Debian's headless Chromium
#   nodejs, npm   the page's unit tests (node --test) and the Playwright driver of that test
#   openssl       localsendd (below) makes its HTTPS certificate with the openssl command
debian_packages=(iproute2 nftables iputils-ping chromium nodejs openssl)
command -v npm >/dev/null 2>&1 || debian_packages+=(npm)
#   zeroconf      python-zeroconf: the independent mDNS implementation discovery is checked against
#   aiortc        the independent WebRTC stack of the interop peer (tests/interop/peer.py)
#   cbor2         the interop peer's CBOR for the transfer protocol (spec 4)
#   aioquic       the interop peer's QUIC between nodes (spec 6), by aiortc's author
#   localsendd    an independent LocalSend v2.2 daemon (standard library only) that
#                 tests/e2e/localsend.rs sends to and receives from
python_modules=("zeroconf:zeroconf>=0.130" "aiortc:aiortc==1.16.0" "cbor2:cbor2==6.3.0"
                "aioquic:aioquic==1.7.2" "localsendd:localsendd==0.1.1")
wasm_target=wasm32-unknown-unknown
#   playwright-core  drives Chromium for tests/e2e/browser.rs (never downloads a browser: it
#                    runs Debian's /usr/bin/chromium); kept in a cache, not installed globally
playwright_version=1.65.1
export FSNODE_PLAYWRIGHT_DIR=${FSNODE_PLAYWRIGHT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fsnode/playwright}

section() { printf '\n=== %s ===\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "test.sh: '$*' needs root; run it as root or install sudo" >&2; exit 1
  fi
}

# --- what is missing ------------------------------------------------------------------------
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
missing_toolchain=0
rustup run "$toolchain" rustc --version >/dev/null 2>&1 || missing_toolchain=1
missing_target=0
rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -qx "$wasm_target" \
  || missing_target=1
missing_debs=()
for pkg in "${debian_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing_debs+=("$pkg")
done
missing_py=()
for entry in "${python_modules[@]}"; do
  module=${entry%%:*}
  python3 -c "import $module" >/dev/null 2>&1 || missing_py+=("${entry#*:}")
done
missing_playwright=0
[ "$(node -p "require('$FSNODE_PLAYWRIGHT_DIR/node_modules/playwright-core/package.json').version" 2>/dev/null)" = "$playwright_version" ] \
  || missing_playwright=1
missing_fuzz=0
if [ "$fuzz" -eq 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then missing_fuzz=1; fi

summary=()
[ "$missing_toolchain" -eq 1 ] && summary+=("Rust $toolchain (rustup)")
[ "$missing_target" -eq 1 ] && summary+=("the $wasm_target target (rustup)")
[ ${#missing_debs[@]} -gt 0 ] && summary+=("Debian packages ${missing_debs[*]} (apt-get)")
[ ${#missing_py[@]} -gt 0 ] && summary+=("Python modules ${missing_py[*]} (pip)")
[ "$missing_playwright" -eq 1 ] && summary+=("playwright-core $playwright_version (npm, into $FSNODE_PLAYWRIGHT_DIR)")
[ "$missing_fuzz" -eq 1 ] && summary+=("cargo-fuzz 0.13.2 (cargo install)")
if [ ${#summary[@]} -gt 0 ]; then
  printf 'test.sh: installing %s\n' "$(IFS=';'; echo "${summary[*]}" | sed 's/;/, /g')"
else
  echo "test.sh: nothing to install"
fi

# --- install it -----------------------------------------------------------------------------
section "toolchain"
# rustup adds a toolchain file's targets only when it installs the toolchain itself, so a
# machine that already had this compiler may lack the wasm target the policy plugins build for.
[ "$missing_toolchain" -eq 1 ] && rustup toolchain install "$toolchain" --profile minimal
[ "$missing_target" -eq 1 ] && rustup target add "$wasm_target" --toolchain "$toolchain"
rustup component add rustfmt clippy --toolchain "$toolchain" >/dev/null 2>&1 || true
cargo --version

if [ ${#missing_debs[@]} -gt 0 ]; then
  section "Debian packages: ${missing_debs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}"
fi
if [ ${#missing_py[@]} -gt 0 ]; then
  section "Python modules: ${missing_py[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${missing_py[@]}"
fi
if [ "$missing_playwright" -eq 1 ]; then
  section "playwright-core $playwright_version"
  mkdir -p "$FSNODE_PLAYWRIGHT_DIR"
  npm install --prefix "$FSNODE_PLAYWRIGHT_DIR" --no-audit --no-fund --silent \
    "playwright-core@$playwright_version"
fi
if [ "$missing_fuzz" -eq 1 ]; then
  section "cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi

[ "$install_only" -eq 1 ] && exit 0

# --- the suite ------------------------------------------------------------------------------
section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo test --workspace"
cargo test --workspace

section "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

if [ "$fuzz" -eq 1 ]; then
  section "fuzz: every cargo fuzz target for 30 s (FUZZING.md)"
  # Unoptimized build (FUZZ_PROFILE=dev): a cold release build of the dependency tree under
  # ASan costs 20+ minutes; these runs guard against regressions, FUZZING.md has the long runs.
  FUZZ_PROFILE=dev fuzz/run.sh 30
fi
