# Sourced by the SDK runners: the venv under target/sdk-venv with the published SDK
# (wrenn 0.3.0, unchanged) and pytest, made once.
venv=target/sdk-venv
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c 'import wrenn' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q --ignore-requires-python wrenn==0.3.0 pytest
fi
