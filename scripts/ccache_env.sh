# Sourced by scripts/build.sh and scripts/test_python.sh: when ccache is installed (scripts/setup.sh
# installs it), sets `compiler_launcher=ccache` and makes hits independent of the clone and build
# folder (paths below the repository are hashed relative to it; the working directory is not).
compiler_launcher=""
if command -v ccache >/dev/null 2>&1; then
  compiler_launcher=ccache
  CCACHE_BASEDIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  export CCACHE_BASEDIR CCACHE_NOHASHDIR=1
fi
