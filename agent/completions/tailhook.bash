# bash completion for tailhook                                      -*- shell-script -*-
#
# Install: tailhook completion bash > /usr/share/bash-completion/completions/tailhook
# (or source it from ~/.bashrc). Completes commands, dead-letter actions, options,
# --format values, files, and the webhook names of the config (-c PATH, else
# $TAILHOOK_CONFIG, else /etc/tailhook/config.yaml) for test-webhook and dead-letter,
# which it reads with `tailhook completion webhooks`, its errors discarded.
# Needs bash 4; does not need the bash-completion package.

# The webhook names of the config named on the command line (or the default one).
# $1: the command as typed; the words before the cursor are read from COMP_WORDS.
_tailhook_webhooks() {
    local cmd=$1 config="" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        case $word in
            -c | --config)
                config=${COMP_WORDS[i + 1]-}
                # --config=PATH: bash splits it at '=' (COMP_WORDBREAKS)
                [[ $config == = ]] && config=${COMP_WORDS[i + 2]-}
                ;;
            --config=?*) config=${word#--config=} ;;
            -c?*) config=${word#-c} ;;
        esac
    done
    cmd=${cmd/#\~/$HOME}
    config=${config/#\~/$HOME}
    if [[ -n $config ]]; then
        "$cmd" completion webhooks -c "$config" 2>/dev/null
    else
        "$cmd" completion webhooks 2>/dev/null
    fi
}

# Files (and directories to walk into), with the names quoted as the shell needs.
_tailhook_files() {
    local IFS=$'\n'
    compopt -o filenames 2>/dev/null
    COMPREPLY=($(compgen -f -- "$1"))
}

_tailhook() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]-} option
    COMPREPLY=()

    # The value of an option: --opt VALUE, or --opt=VALUE split at '=' by bash.
    if [[ $cur == = ]]; then
        option=$prev cur=""
    elif [[ $prev == = ]]; then
        option=${COMP_WORDS[COMP_CWORD - 2]-}
    else
        option=$prev
    fi
    case $option in
        -c | --config)
            _tailhook_files "$cur"
            return
            ;;
        --format)
            COMPREPLY=($(compgen -W "native modsecurity" -- "$cur"))
            return
            ;;
        --linger | --show)
            return
            ;;
    esac

    # The words before the cursor that are not options nor their values:
    # the command, then its action or arguments.
    local -a args=()
    local word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        case $word in
            -c | --config | --format | --linger | --show)
                [[ ${COMP_WORDS[i + 1]-} == = ]] && ((i++))
                ((i++))
                ;;
            -*) ;;
            *) args+=("$word") ;;
        esac
    done

    local command=${args[0]-} options="" words="" names=0 files=0
    case $command in
        "")
            options="--help --version"
            words="run check-config validate test-webhook demo dead-letter completion"
            ;;
        run | check-config) options="-c --config --help" ;;
        validate)
            options="--format --print --help"
            files=1
            ;;
        test-webhook)
            options="-c --config --help"
            ((${#args[@]} == 1)) && names=1
            ;;
        demo) options="--linger --help" ;;
        dead-letter)
            case ${args[1]-} in
                "")
                    options="--help"
                    words="list replay"
                    ;;
                list)
                    options="-c --config --json --show --help"
                    ((${#args[@]} == 2)) && names=1
                    ;;
                replay)
                    options="-c --config --help"
                    ((${#args[@]} == 2)) && names=1
                    ;;
            esac
            ;;
        completion)
            options="-c --config --help"
            ((${#args[@]} == 1)) && words="bash zsh webhooks"
            ;;
    esac

    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
    elif ((names)); then
        local IFS=$'\n'
        COMPREPLY=($(compgen -W "$(_tailhook_webhooks "${COMP_WORDS[0]}")" -- "$cur"))
    elif ((files)); then
        _tailhook_files "$cur"
    elif [[ -n $words ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
}

complete -F _tailhook tailhook
