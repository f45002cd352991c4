#!/bin/sh
# Puts the Search scenario's six people into Tessera's directory over SCIM 2.0: each
# one's id in the scenario is the userName, the role a SCIM role and the department the
# enterprise extension's (RFC 7643 §4.3). The records are in records.resources.json.
#
#   TESSERA_ADMIN_TOKEN=... policies/examples/authzen-search/provision.sh [BASE_URL]
#
# BASE_URL is Tessera's HTTP port (default http://127.0.0.1:8080). Running it again
# changes nothing: a person already there is left as is.
set -eu
base=${1:-http://127.0.0.1:8080}
: "${TESSERA_ADMIN_TOKEN:?set TESSERA_ADMIN_TOKEN to an admin token}"
enterprise=urn:ietf:params:scim:schemas:extension:enterprise:2.0:User

person() { # userName, role, department
  status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$base/scim/v2/Users" \
    -H "Authorization: Bearer $TESSERA_ADMIN_TOKEN" \
    -H 'Content-Type: application/scim+json' \
    -d "{\"schemas\":[\"urn:ietf:params:scim:schemas:core:2.0:User\",\"$enterprise\"],
         \"userName\":\"$1\",\"roles\":[{\"value\":\"$2\"}],
         \"$enterprise\":{\"department\":\"$3\"}}")
  case $status in
    201) echo "added $1" ;;
    409) echo "kept $1 (already in the directory)" ;;
    *) echo "cannot add $1: HTTP $status" >&2; exit 1 ;;
  esac
}

person alice manager Sales
person bob employee Legal
person carol contractor Legal
person dan manager Finance
person erin employee Finance
person felix contractor Accounting
