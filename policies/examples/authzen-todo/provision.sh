#!/bin/sh
# Puts the Todo scenario's five people into Tessera's directory over SCIM 2.0.
#
#   TESSERA_ADMIN_TOKEN=... policies/examples/authzen-todo/provision.sh [BASE_URL]
#
# BASE_URL is Tessera's HTTP port (default http://127.0.0.1:8080); the token is the
# bootstrap admin token `tessera serve` prints (or any token with tessera:admin). Each
# person's interop id (the `sub` the scenario's identity provider issues) is the SCIM
# externalId, the e-mail address the userName and primary e-mail. Running it again
# changes nothing: a person already there is left as is.
set -eu
base=${1:-http://127.0.0.1:8080}
: "${TESSERA_ADMIN_TOKEN:?set TESSERA_ADMIN_TOKEN to an admin token}"

person() { # externalId, e-mail, display name, role...
  external=$1 email=$2 name=$3
  shift 3
  roles=""
  for role in "$@"; do roles="$roles${roles:+,}{\"value\":\"$role\"}"; done
  status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$base/scim/v2/Users" \
    -H "Authorization: Bearer $TESSERA_ADMIN_TOKEN" \
    -H 'Content-Type: application/scim+json' \
    -d "{\"schemas\":[\"urn:ietf:params:scim:schemas:core:2.0:User\"],
         \"externalId\":\"$external\",\"userName\":\"$email\",\"displayName\":\"$name\",
         \"emails\":[{\"value\":\"$email\",\"primary\":true}],\"roles\":[$roles]}")
  case $status in
    201) echo "added $email" ;;
    409) echo "kept $email (already in the directory)" ;;
    *) echo "cannot add $email: HTTP $status" >&2; exit 1 ;;
  esac
}

person CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs \
  rick@the-citadel.com "Rick Sanchez" admin evil_genius
person CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs \
  morty@the-citadel.com "Morty Smith" editor
person CiRmZDI2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs \
  summer@the-smiths.com "Summer Smith" editor
person CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs \
  beth@the-smiths.com "Beth Smith" viewer
person CiRmZDQ2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs \
  jerry@the-smiths.com "Jerry Smith" viewer
