// A real OpenID Connect provider (panva/oidc-provider) for Tidegate's resource-server tests.
//
//   node server.mjs [--port N] [--jwks FILE] [--clients FILE]
//
// Environment (the command-line flags win):
//   PORT           port on 127.0.0.1 (0 = any free port; the issuer uses the bound port)
//   JWKS / JWKS_FILE        private JWK Set (JSON / path). The FIRST key signs access
//                           tokens; every key's public half is published at jwks_uri.
//   CLIENTS / CLIENTS_FILE  JSON array of clients:
//     [{"client_id": "tenant-a", "client_secret": "...", "tenant_id": "ten_a",
//       "scopes": "events:read payload:read", "amr": ["pwd", "mfa"]}]
//   AUDIENCE       the only resource indicator (JWT "aud"), default https://api.tidegate.test
//   ACCESS_TOKEN_TTL  seconds, default 300
//
// Prints "READY http://127.0.0.1:<port>" on stdout once it accepts requests; exits 0 on
// SIGTERM/SIGINT.
import * as fs from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: { port: { type: 'string' }, jwks: { type: 'string' }, clients: { type: 'string' } },
});

const readJson = (inline, file) => {
  if (file) return JSON.parse(fs.readFileSync(file, 'utf8'));
  if (inline) return JSON.parse(inline);
  return undefined;
};

const port = Number(args.port ?? process.env.PORT ?? 0);
const audience = process.env.AUDIENCE || 'https://api.tidegate.test';
const ttl = Number(process.env.ACCESS_TOKEN_TTL || 300);
const jwks = readJson(process.env.JWKS, args.jwks ?? process.env.JWKS_FILE);
const clients = readJson(process.env.CLIENTS, args.clients ?? process.env.CLIENTS_FILE) ?? [];
if (!jwks?.keys?.length) throw new Error('a private JWKS is required (--jwks FILE or JWKS)');

// Scopes the resource server accepts; a client may only get the ones in its own "scopes".
const scopes = new Set([
  'events:write', 'events:read', 'payload:read', 'destinations:read', 'destinations:write',
  'sources:write', 'replay:execute', 'audit:read', 'usage:read', 'tidegate:admin',
  ...clients.flatMap((c) => (c.scopes ?? '').split(' ').filter(Boolean)),
]);

// Access tokens are signed with the first key; its algorithm follows from the key.
const algOf = (jwk) => jwk.alg ?? { RSA: 'RS256', EC: 'ES256', OKP: 'EdDSA' }[jwk.kty];
const signingAlg = algOf(jwks.keys[0]);

// Claims oidc-provider does not know about, keyed by client_id.
const extras = new Map(clients.map((c) => [c.client_id, c]));

// Bind first (port 0 picks a free one), then build the provider: the issuer names the port.
const server = http.createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    jwks,
    scopes: [...scopes],
    clients: clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
      scope: c.scopes || undefined, // allow-list for requested scopes (none: see below)
      id_token_signed_response_alg: signingAlg,
    })),
    clientDefaults: { id_token_signed_response_alg: signingAlg },
    features: {
      devInteractions: { enabled: false }, // no login UI: only client_credentials is used
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => audience, // a token request without `resource` still gets a JWT
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => {
          if (resource !== audience) throw new errors.InvalidTarget();
          return {
            // Only the client's own scopes can end up in its tokens (requesting another
            // known scope is refused with invalid_scope; unknown scopes are dropped).
            scope: extras.get(client.clientId)?.scopes ?? '',
            audience,
            accessTokenTTL: ttl,
            accessTokenFormat: 'jwt', // RFC 9068 JWT, header typ "at+jwt"
            jwt: { sign: { alg: signingAlg } },
          };
        },
      },
    },
    // Extra claims in every access token: tenant_id and (when configured) amr.
    extraTokenClaims: (ctx, token) => {
      const c = extras.get(token.clientId);
      if (!c) return undefined;
      return { tenant_id: c.tenant_id, ...(c.amr ? { amr: c.amr } : {}) };
    },
    ttl: { ClientCredentials: ttl },
  });
  server.on('request', provider.callback());
  console.log(`READY ${issuer}`);
});

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections(); // keep-alive sockets would hold close() open
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
