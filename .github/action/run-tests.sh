#!/usr/bin/env bash
# Runs one build's AppWright tests on qgjob with one `qgjob submit --wait`, writes a JUnit
# report and a job summary, and exits with qgjob's code: 0 every test passed, 1 a test
# failed, 2 an error or a timeout (and 2 for a bad input here).
#
# Used by action.yml, and runnable anywhere qgjob is installed: set the variables below and
# run it from the folder the test paths are relative to.
#   QG_API_URL         the qgjob API (required)
#   QG_TOKEN           bearer token (optional)
#   QG_ORG_ID          organisation (required)
#   QG_APP_VERSION_ID  the app build (required)
#   QG_TESTS           test paths and globs, separated by spaces or newlines (required);
#                      a glob ("tests/**/*.spec.js") must match at least one file here, a
#                      plain path is passed on as it is (the agents run it, not this machine)
#   QG_TARGET          emulator, device or browserstack (default emulator)
#   QG_PRIORITY        1-5 or low, normal, high, urgent (default normal)
#   QG_TIMEOUT         seconds to wait for every verdict (default 1800)
#   QG_RETRIES         extra runs allowed for a failing test (default 0)
#   QG_JUNIT_REPORT    where to write the JUnit XML (default qgjob-junit.xml)
# When GITHUB_OUTPUT is set, it receives `junit-report=<absolute path>` and `exit-code=<N>`;
# when GITHUB_STEP_SUMMARY is set, qgjob appends a table of the verdicts to it.
set -euo pipefail
shopt -s globstar nullglob

die() {
  if [[ "${GITHUB_ACTIONS:-}" == "true" ]]; then
    # An annotation on the run's page; workflow commands need % encoded.
    echo "::error title=qgjob::${1//'%'/%25}"
  else
    echo "run-tests: error: $1" >&2
  fi
  exit 2
}

output() {
  if [[ -n "${GITHUB_OUTPUT:-}" ]]; then
    echo "$1=$2" >>"$GITHUB_OUTPUT"
  fi
}

[[ -n "${QG_API_URL:-}" ]] || die "QG_API_URL is empty: give the action's api-url input"
[[ -n "${QG_ORG_ID:-}" ]] || die "QG_ORG_ID is empty: give the action's org-id input"
[[ -n "${QG_APP_VERSION_ID:-}" ]] || die "QG_APP_VERSION_ID is empty: give app-version-id"
# An empty token means none: the CLI would otherwise send an empty bearer token.
[[ -n "${QG_TOKEN:-}" ]] || unset QG_TOKEN
command -v qgjob >/dev/null || die "qgjob is not on PATH: pip install it first"

target="${QG_TARGET:-emulator}"
priority="${QG_PRIORITY:-normal}"
timeout="${QG_TIMEOUT:-1800}"
retries="${QG_RETRIES:-0}"
junit="${QG_JUNIT_REPORT:-qgjob-junit.xml}"

# Split on any whitespace, newlines included; `read` expands no glob by itself.
read -r -d '' -a items <<<"${QG_TESTS:-}" || true
tests=()
declare -A seen=()
for item in "${items[@]}"; do
  if [[ "$item" == *[\*\?\[]* ]]; then
    matches=()
    # Unquoted on purpose: this is the glob expansion (globstar: ** spans folders).
    for path in $item; do
      [[ -f "$path" ]] && matches+=("$path")
    done
    ((${#matches[@]} > 0)) || die "no test file matches '$item' in $PWD"
  else
    matches=("$item")
  fi
  for path in "${matches[@]}"; do
    # A test named twice (a path and a glob that covers it) runs once.
    if [[ -z "${seen[$path]:-}" ]]; then
      seen[$path]=1
      tests+=("$path")
    fi
  done
done
((${#tests[@]} > 0)) || die "no tests given: set QG_TESTS (the action's tests input)"

args=(
  submit --org-id "$QG_ORG_ID" --app-version-id "$QG_APP_VERSION_ID"
  --target "$target" --priority "$priority" --retries "$retries"
)
for path in "${tests[@]}"; do
  args+=(--test "$path")
done
args+=(--wait --timeout "$timeout" --junit "$junit" --summary)

case "$junit" in
  /*) output junit-report "$junit" ;;
  *) output junit-report "$PWD/$junit" ;;
esac
echo "run-tests: ${#tests[@]} test(s) of $QG_APP_VERSION_ID on $target via $QG_API_URL" >&2
code=0
qgjob "${args[@]}" || code=$?
output exit-code "$code"
exit "$code"
