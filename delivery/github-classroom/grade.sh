#!/usr/bin/env bash
# The grading step of the GitHub Classroom workflow (classroom.yml), runnable anywhere:
#
#   bash grade.sh SUBMISSION [GRADER]
#
# SUBMISSION: the student's repository (the course's notebooks anywhere in it); GRADER: the course
# repository holding autograder/, exercises/, solutions/ and source/ (default: the one this script
# is in). Writes the job summary ($GITHUB_STEP_SUMMARY), the step outputs score, max_score, graded
# and result ($GITHUB_OUTPUT) and GitHub Classroom's "Points X/Y" notice (summary.py).
# Exit status: 0 graded (whatever the score); 1 nothing to grade (no notebook of the course in the
# repository); 2 not graded (a grader fault: no score is given, never a zero).
# Settings: SELFATTN_PYTHON (default python3), SELFATTN_GRADE_ARGS (e.g. "--seed 7").
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash grade.sh SUBMISSION [GRADER]" >&2
    exit 2
fi
SUBMISSION="$(cd "$1" && pwd)" || exit 2
GRADER="$(cd "${2:-$(dirname "${BASH_SOURCE[0]}")/../..}" && pwd)" || exit 2
PYTHON="${SELFATTN_PYTHON:-python3}"
SUMMARY="${GITHUB_STEP_SUMMARY:-/dev/null}"
OUTPUT="${GITHUB_OUTPUT:-/dev/null}"
read -r -a GRADE_ARGS <<< "${SELFATTN_GRADE_ARGS:-}"

not_graded() {
    printf '## Not graded\n\nThe autograder failed (%s). This is not your fault, and no score was given: tell course staff.\n' \
        "$1" >> "$SUMMARY"
    echo "graded=false" >> "$OUTPUT"
    echo "::error title=Not graded::the autograder failed ($1); no score was given"
    exit 2
}

WORK="$(mktemp -d)" || not_graded "no temporary folder"
trap 'rm -rf "$WORK"' EXIT
# Only the grader checked out in GRADER: never another copy from the environment.
export PYTHONPATH="$GRADER"
cd "$GRADER" || not_graded "cannot enter $GRADER"

"$PYTHON" - "${GRADE_ARGS[@]}" <<'PY' || not_graded "student code could not be kept away from the solutions: no working bubblewrap, and the worker cannot run as another user (run this step as root)"
import sys

from autograder import sandbox

# The grader's own choice, --no-bwrap included: the worker must be kept away from this folder either way.
bwrap = None if "--no-bwrap" in sys.argv[1:] else sandbox.bubblewrap()
sys.exit(0 if bwrap or sandbox.can_drop_privileges(bwrap) else 1)
PY

"$PYTHON" "$GRADER/delivery/stage_submission.py" "$SUBMISSION" "$WORK/submission" 2> "$WORK/stage.err"
staged=$?
if [ "$staged" = 1 ]; then
    printf '## Nothing to grade\n\n%s\n' "$(cat "$WORK/stage.err")" >> "$SUMMARY"
    echo "graded=false" >> "$OUTPUT"
    echo "::error title=Nothing to grade::no notebook of the course was found in this repository"
    exit 1
elif [ "$staged" != 0 ]; then
    not_graded "could not read the submission"
fi

# Whatever the grader prints quotes student code and messages: GitHub must not read workflow
# commands (a forged "Points 43/43" notice) from it, so commands stop until a random token.
token="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
echo "::stop-commands::$token"
"$PYTHON" -m autograder grade "$WORK/submission" --json "$WORK/report.json" "${GRADE_ARGS[@]}"
status=$?
echo "::$token::"
if [ "$status" != 0 ]; then
    not_graded "the grader stopped with exit status $status"
fi
"$PYTHON" "$GRADER/delivery/github-classroom/summary.py" "$WORK/report.json"
