// Print a private JWK Set with one signing key, for server.mjs --jwks.
//
//   node make_jwks.mjs [kid] [RS256|ES256|EdDSA]     (defaults: a random kid, RS256)
//
// Rotation: combine two outputs as {"keys": [new, old]}; the first key signs.
import * as crypto from 'node:crypto';

const [kid = crypto.randomUUID(), alg = 'RS256'] = process.argv.slice(2);
const generate = {
  RS256: () => crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }),
  ES256: () => crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }),
  EdDSA: () => crypto.generateKeyPairSync('ed25519'),
}[alg];
if (!generate) throw new Error(`unsupported alg ${alg}: use RS256, ES256 or EdDSA`);

const jwk = generate().privateKey.export({ format: 'jwk' });
console.log(JSON.stringify({ keys: [{ ...jwk, kid, alg, use: 'sig' }] }, null, 2));
