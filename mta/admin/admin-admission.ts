/*
 * The admin API's admission routes: how loaded this node is, as admission measures it.
 *
 *   GET /v1/admission    the mode (admission.mode), whether pressure is being measured, the level
 *                        and since when, queue intake (open or paused), and each signal with its
 *                        value, thresholds, whether it is a floor, and its own level
 * Takes: the running process's `admissionStatus` (mta/mta-daemon.ts, from admission/admission-pressure.ts).
 */
import type { AdmissionStatus } from '../admission/admission-pressure.js';
import type { AdminRoute } from './admin-request.js';

export interface AdmissionTarget {
  admissionStatus(): AdmissionStatus;
}

export const admissionRoute: AdminRoute<AdmissionTarget> = async ({ method, path }, target) => {
  if (method === 'GET' && path === '/v1/admission') return [200, target.admissionStatus()];
  return null;
};
