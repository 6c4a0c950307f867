# Sourced by the bench/device_*.sh scripts: run from the source tree on a machine without network.
# Installs the wheels carried in .whl/ (math-verify and its needs) into /tmp/site, puts src/ on the path,
# and uses a carried SFT warm-up cache in .devcache/ when there is one.
OUT=${OUT:-out/device}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -d .devcache ]; then export ASYMPO_CACHE=$PWD/.devcache; fi
