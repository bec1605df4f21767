/*
 * Errors every stage meets and none owns: what counts as a storage failure (the disk, its quota,
 * the queue database), which the accept step answers with 452 4.3.1 (RFC 3463 X.3.1: mail system
 * full) instead of the 451 4.3.0 of any other local error.
 */

/** Disk full, quota, I/O error or a failing database: the 452 4.3.1 family. */
export function isStorageError(err: unknown): boolean {
  const e = err as { code?: string; name?: string };
  if (e?.code && ['ENOSPC', 'EDQUOT', 'EIO', 'EROFS', 'EMFILE', 'ENFILE'].includes(e.code)) return true;
  return e?.name === 'SqliteError' || (typeof e?.code === 'string' && e.code.startsWith('SQLITE_'));
}
