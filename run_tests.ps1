# Create .venv if absent, install requirements.txt, run the whole test suite (Windows PowerShell).
# Extra arguments go to pytest. Exit code 5 (no tests ran) is a failure.
$ErrorActionPreference = "Stop"
Set-Location -Path $PSScriptRoot
if (-not (Test-Path ".venv\Scripts\python.exe")) {
    python -m venv .venv
}
& .venv\Scripts\python.exe -m pip install --disable-pip-version-check -q -r requirements.txt
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
& .venv\Scripts\python.exe -m pytest -rA @args
$status = $LASTEXITCODE
if ($status -eq 5) {
    Write-Error "run_tests.ps1: no tests were collected: failing"
    exit 1
}
exit $status
