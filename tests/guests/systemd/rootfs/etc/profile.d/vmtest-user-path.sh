# Per-user programs (like NixOS' users.users.<name>.packages): a user's
# ~/.bash_env may extend PATH. Non-login shells (`su -- alice -c ...`) read
# it through BASH_ENV, login shells through this file.
export BASH_ENV=/etc/vmtest-bash-env
. /etc/vmtest-bash-env
