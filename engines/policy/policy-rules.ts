/*
 * The attachment rules of the policy engine: what a file's name and first bytes say about it.
 *
 * Takes: a file name (an attachment's, or an entry's inside an archive) and the first bytes of
 *   an attachment.
 * Gives: the broken rule as words for the violation text ("double extension", "blocked
 *   extension .exe", "executable content (PE)"), or null; and a name made fit to print in that
 *   text, which ends up in logs, headers and terminals.
 * Names are judged the way Windows opens them: case does not matter, and trailing dots and
 *   spaces are dropped ("invoice.exe." runs as invoice.exe); a path inside an archive counts
 *   by its last component.
 */

/**
 * Types Windows (and the Java and disk-image handlers it ships) run or mount on a double-click,
 * close to the list the large mailbox providers refuse. Disk images (iso, img, vhd, vhdx) are in
 * it because they carry executables past the mark-of-the-web warning.
 */
export const DEFAULT_BLOCKED_EXTENSIONS = [
  'ade', 'adp', 'appx', 'appxbundle', 'bat', 'cab', 'chm', 'cmd', 'com', 'cpl', 'dll', 'exe', 'gadget', 'hta', 'img',
  'inf', 'ins', 'iso', 'isp', 'jar', 'jnlp', 'js', 'jse', 'lnk', 'mde', 'msc', 'msi', 'msix', 'msixbundle', 'msp', 'mst',
  'pif', 'ps1', 'psm1', 'reg', 'scf', 'scr', 'sct', 'shb', 'sys', 'url', 'vb', 'vbe', 'vbs', 'vhd', 'vhdx', 'vxd', 'wsc',
  'wsf', 'wsh', 'xll',
];

/** Extensions a recipient trusts on sight; one of them right before a blocked one is a disguise. */
const DOCUMENT_LIKE = new Set([
  'pdf', 'doc', 'docx', 'docm', 'xls', 'xlsx', 'xlsm', 'ppt', 'pptx', 'odt', 'ods', 'odp', 'rtf', 'txt', 'csv', 'xml',
  'htm', 'html', 'jpg', 'jpeg', 'png', 'gif', 'bmp', 'tif', 'tiff', 'svg', 'mp3', 'mp4', 'wav', 'avi', 'mov', 'zip',
  'rar', '7z', 'eml', 'msg', 'ics', 'vcf',
]);

const DISPLAY_LENGTH = 100;
const HEAD_LENGTH = 70;

/**
 * A name as the violation text shows it: C0 and C1 controls, DEL, and the bidirectional and
 * line-separator marks (U+202E and friends) become '?', so that a
 * crafted file name cannot move a terminal's cursor, set its title or forge a log line; past
 * 100 characters the middle gives way to '…', keeping the end where the extensions are.
 */
export function displayName(name: string): string {
  const chars = Array.from(name.replace(/[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]/g, '?'));
  if (chars.length <= DISPLAY_LENGTH) return chars.join('');
  return `${chars.slice(0, HEAD_LENGTH).join('')}…${chars.slice(chars.length - (DISPLAY_LENGTH - HEAD_LENGTH - 1)).join('')}`;
}

export function baseName(name: string): string {
  return name.split(/[/\\]/).pop()!.replace(/[.\s]+$/, '');
}

/** The rule a file name breaks, or null. */
export function nameRule(name: string, blocked: ReadonlySet<string>): string | null {
  const parts = baseName(name).toLowerCase().split('.').map((p) => p.trim());
  if (parts.length < 2) return null;
  const last = parts[parts.length - 1];
  if (!blocked.has(last)) return null;
  if (parts.length >= 3 && DOCUMENT_LIKE.has(parts[parts.length - 2])) return 'double extension';
  return `blocked extension .${last}`;
}

/**
 * Executable formats by their magic numbers, whatever the name: Windows PE (an MZ header whose
 * e_lfanew points at "PE\0\0", so a text that merely starts with "MZ" is not one), ELF, Mach-O.
 */
export function executableKind(head: Buffer): string | null {
  if (head.length >= 0x40 && head[0] === 0x4d && head[1] === 0x5a) {
    const pe = head.readUInt32LE(0x3c);
    if (pe + 4 <= head.length && head.readUInt32BE(pe) === 0x50450000) return 'PE';
  }
  if (head.length >= 6 && head.readUInt32BE(0) === 0x7f454c46 && [1, 2].includes(head[4]) && [1, 2].includes(head[5])) return 'ELF';
  if (head.length >= 4 && [0xfeedface, 0xfeedfacf, 0xcefaedfe, 0xcffaedfe].includes(head.readUInt32BE(0))) return 'Mach-O';
  return null;
}
