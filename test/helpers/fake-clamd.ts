/*
 * A clamd stand-in for fault injection: reads a whole INSTREAM request (command, chunks, end
 * chunk) and answers per behaviour; answers zPING and zVERSION too.
 */
import type { Socket } from 'node:net';
import type { FaultBehaviour } from './engine-contract.js';

/** Reads a whole INSTREAM request (command, chunks, end chunk), then answers per behaviour. */
export function fakeClamd(socket: Socket, behaviour: FaultBehaviour): void {
  let buf = Buffer.alloc(0);
  let stage: 'command' | 'chunks' = 'command';
  socket.on('data', (data: Buffer) => {
    buf = Buffer.concat([buf, data]);
    if (stage === 'command') {
      const nul = buf.indexOf(0);
      if (nul < 0) return;
      const command = buf.subarray(0, nul).toString();
      buf = buf.subarray(nul + 1);
      if (command === 'zPING') return void socket.end('PONG\0');
      if (command === 'zVERSION') return void socket.end('ClamAV 9.9.9/1/Wed Nov 25 00:00:00 2026\0');
      stage = 'chunks';
    }
    if (behaviour === 'too-large') return void socket.end('INSTREAM size limit exceeded. ERROR\0');
    while (buf.length >= 4) {
      const n = buf.readUInt32BE(0);
      if (buf.length < 4 + n) return;
      buf = buf.subarray(4 + n);
      if (n === 0) return answer();
    }
  });
  const answer = () => {
    switch (behaviour) {
      case 'clean': return void socket.end('stream: OK\0');
      case 'hit': return void socket.end('stream: Eicar-Test-Signature FOUND\0');
      case 'hang': return;
      case 'garbage': return void socket.end('\x16\x03\x01 what is this\0');
      case 'close-mid-reply': return void socket.end('stream: ');
    }
  };
}

