/*
 * `ichidan completion bash|zsh`: a shell completion script, built from the command tree itself
 * (cli-commands.ts), so a new command or option completes without anyone editing a list.
 *
 *   source <(ichidan completion bash)       or save it as /etc/bash_completion.d/ichidan
 *   source <(ichidan completion zsh)        zsh through its bash compatibility (bashcompinit)
 * Completes command names at each level, each command's options and the global ones, file names
 * after -c/--config and for a command whose argument is a file; nothing after other options that
 * take a value.
 */
import { Argument, type Command, type Option } from 'commander';

interface Level {
  /** "queue corrupt": the words after "ichidan". */
  path: string;
  words: string[];
  /** Its argument is a file name (check-config, suppression import). */
  files: boolean;
}

function flags(options: readonly Option[]): string[] {
  return options.flatMap((o) => [o.long, o.short].filter((f): f is string => f !== undefined));
}

function levels(cmd: Command, path: string[], globals: string[]): Level[] {
  const subs = cmd.commands.map((c) => c.name());
  const words = [...subs, ...(subs.length > 0 ? ['help'] : []), ...flags(cmd.options), ...(cmd.parent ? globals : []), '--help'];
  const files = cmd.registeredArguments.some((a) => a.name() === 'file');
  return [{ path: path.join(' '), words: [...new Set(words)], files }, ...cmd.commands.flatMap((c) => levels(c, [...path, c.name()], globals))];
}

function valued(cmd: Command): string[] {
  return [...flags(cmd.options.filter((o) => o.required || o.optional)), ...cmd.commands.flatMap(valued)];
}

export function bashScript(program: Command): string {
  // The global options, offered at every level (--version only at the top, where it is an option of its own).
  const globals = flags(program.options.filter((o) => o.long !== '--version'));
  const all = levels(program, [], globals);
  const quote = (s: string) => `'${s}'`;
  const values = [...new Set(valued(program))].filter((f) => f !== '-c' && f !== '--config');
  return `# bash completion for ichidan (written by \`ichidan completion bash\` from its command tree)
_ichidan_words() {
  case "$1" in
${all.map((l) => `    ${quote(l.path)}) echo ${quote(l.words.join(' '))} ;;`).join('\n')}
  esac
}
_ichidan_is_command() {
  case "$1" in
    ${all.filter((l) => l.path !== '').map((l) => quote(l.path)).join('|')}) return 0 ;;
  esac
  return 1
}
_ichidan() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} path='' next i
  for ((i = 1; i < COMP_CWORD; i++)); do
    next=\${path:+$path }\${COMP_WORDS[i]}
    if _ichidan_is_command "$next"; then path=$next; fi
  done
  case "$prev" in
    -c|--config) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    ${values.join('|')}) COMPREPLY=(); return ;;
  esac
  case "$path" in
    ${all.filter((l) => l.files).map((l) => quote(l.path)).join('|') || "''"})
      if [[ $cur != -* ]]; then COMPREPLY=($(compgen -f -- "$cur")); return; fi ;;
  esac
  COMPREPLY=($(compgen -W "$(_ichidan_words "$path")" -- "$cur"))
}
complete -F _ichidan ichidan
`;
}

export function zshScript(program: Command): string {
  return `#compdef ichidan
autoload -U +X bashcompinit && bashcompinit
${bashScript(program)}`;
}

export function addCompletionCommand(program: Command): void {
  program.command('completion').description('a shell completion script built from the commands: source <(ichidan completion bash)')
    .addArgument(new Argument('<shell>', 'bash or zsh').choices(['bash', 'zsh']))
    .action((shell: 'bash' | 'zsh') => {
      process.stdout.write(shell === 'bash' ? bashScript(program) : zshScript(program));
    });
}
