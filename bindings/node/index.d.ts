// Types of the m2mpsk package (lib/index.js, lib/dtls.js and the raw SWIG
// layer). The raw layer's methods keep the C names (snake_case).
/// <reference types="node" />
import * as net from 'node:net';
import * as http from 'node:http';
import * as stream from 'node:stream';
import { EventEmitter } from 'node:events';

/** Every error of the library: code is an E_ constant, reason a REASON_
 * constant, detail the failure detail or the status's description. */
export interface M2mpskError extends Error {
  name: 'M2mpskError';
  code: number;
  reason: number;
  detail: string;
}

export type Bytes = Buffer | Uint8Array | ArrayBufferView;

export class Keystore {
  constructor(flags?: number);
  close(): void;
  add(kpsaId: string, key: Bytes, ida: string | null, idb: string,
      notBefore?: number, notAfter?: number): void;
  add_derived(kpsaId: string, ke: Bytes, enroleeBId: string, ida: string | null, idb: string,
              notBefore?: number, notAfter?: number): void;
  remove(kpsaId: string): void;
  revoke(kpsaId: string): void;
  lookup(kpsaId: string): { ida: string; idb: string; not_before: number; not_after: number; revoked: number };
  count(): number;
  is_locked(): boolean;
  key_memory(): number;
  load_file(path: string): void;
}

export class Config {
  constructor();
  close(): void;
  set_suites(ianaNames: string): void;
  add_local_id(idb: string): void;
  set_handshake_timeout(ms: number): void;
  set_reveal_unknown_identity(on: boolean): void;
  set_roles_reversed(on: boolean): void;
  set_profile(profile: number): void;
  set_engine(engine: number): void;
  suites(transport: number): string;
  set_max_handshakes(n: number): void;
  set_max_input(bytes: number): void;
  set_rate_limit(key: number, maxFailures: number, windowMs: number, blockMs: number, blockMaxMs: number): void;
  peer_blocked(peerTag: string, nowMs: number): number | null;
  handshakes_in_progress(): number;
  set_event_queue(capacity: number): void;
  next_event(): Event | null;
  events_dropped(): number;
  /** The HelloVerifyRequest to send back, or null: accept the peer. */
  dtls_listen(peerTag: string, datagram: Bytes): Buffer | null;
}

export class Event {
  close(): void;
  type(): number;
  reason(): number;
  role(): number;
  transport(): number;
  time_ms(): number;
  kpsa_id(): string | null;
  peer_id(): string | null;
  peer_id_is_credential(): boolean;
  peer_tag(): string | null;
  detail(): string | null;
}

export class Association {
  constructor(role: number, transport: number, config: Config, keystore: Keystore, kpsaId?: string | null);
  close(): void;
  set_mtu(mtu: number): void;
  set_peer_tag(tag: string): void;
  peer_tag(): string | null;
  start(nowMs: number, unixTime?: number): void;
  feed(data: Bytes, nowMs: number): void;
  write(data: Bytes): void;
  drain(): Buffer;
  read(max?: number): Buffer;
  pending(): number;
  next_timeout(): number | null;
  handle_timeout(nowMs: number): void;
  state(): number;
  close_notify(): void;
  peer_id(): string | null;
  peer_id_is_credential(): boolean;
  bind_ae_id(aeId: string): void;
  originator_check(from: string | null, flags?: number): number;
  local_id(): string | null;
  kpsa_id(): string | null;
  engine(): number;
  suite(): string | null;
  version(): string | null;
  failure(): number;
  failure_detail(): string | null;
  export_keying_material(length: number, label: string, context: Bytes | null): Buffer;
}

/** Options of the config every association is made from. */
export interface ConfigOptions {
  config?: Config;
  suites?: string | string[];
  profile?: number;
  engine?: number;
  handshakeTimeout?: number;
  revealUnknownIdentity?: boolean;
  rolesReversed?: boolean;
  maxHandshakes?: number;
  maxInput?: number;
  /** Capacity of the audit event queue (server.config.next_event()). */
  eventQueue?: number;
  /** The CSE-ID(s) a server serves and checks originators against. */
  localId?: string | string[];
}

export interface KeyOptions {
  keystore?: Keystore;
  keyFile?: string;
}

export interface ConnectOptions extends ConfigOptions, KeyOptions {
  host?: string;
  port?: number;
  path?: string;
  socket?: stream.Duplex;
  kpsaId: string;
  allowHalfOpen?: boolean;
  timeout?: number;
  family?: number;
  localAddress?: string;
}

export interface ServerOptions extends ConfigOptions, KeyOptions {
  localId: string | string[];
  maxConnections?: number;
  allowHalfOpen?: boolean;
  noDelay?: boolean;
}

export interface OriginatorFlags {
  aeCreate?: boolean;
  allowUnsecuredAe?: boolean;
}

/** The identity of an established association. */
interface PskIdentity {
  readonly peerId: string | null;
  readonly kpsaId: string | null;
  readonly localId: string | null;
  readonly suite: string | null;
  readonly credential: boolean;
  readonly peerKind: number;
  /** 0, 4106 or 4107. */
  originatorCheck(from: string | null | undefined, flags?: number | OriginatorFlags): number;
  bindAeId(aeId: string): void;
  exportKeyingMaterial(length: number, label: string, context?: Bytes | null): Buffer;
}

export class PSKSocket extends stream.Duplex implements PskIdentity {
  readonly peerId: string | null;
  readonly kpsaId: string | null;
  readonly localId: string | null;
  readonly suite: string | null;
  readonly credential: boolean;
  readonly peerKind: number;
  originatorCheck(from: string | null | undefined, flags?: number | OriginatorFlags): number;
  bindAeId(aeId: string): void;
  exportKeyingMaterial(length: number, label: string, context?: Bytes | null): Buffer;
  readonly encrypted: true;
  authorized: boolean;
  readonly remoteAddress?: string;
  readonly remotePort?: number;
  readonly remoteFamily?: string;
  readonly localAddress?: string;
  readonly localPort?: number;
  readonly connecting: boolean;
  address(): net.AddressInfo | {};
  setTimeout(ms: number, cb?: () => void): this;
  setNoDelay(on?: boolean): this;
  setKeepAlive(on?: boolean, delay?: number): this;
  ref(): this;
  unref(): this;
  getProtocol(): string | null;
  getCipher(): { name: string; standardName: string; version: string | null } | null;
}

export class Server extends net.Server {
  constructor(options: ServerOptions, listener?: (socket: PSKSocket) => void);
  readonly config: Config;
  on(event: 'secureConnection', listener: (socket: PSKSocket) => void): this;
  on(event: 'tlsClientError', listener: (err: M2mpskError | Error, socket: PSKSocket | null) => void): this;
  on(event: string, listener: (...args: any[]) => void): this;
}

export function connect(options: ConnectOptions, secureConnectListener?: () => void): PSKSocket;
export function createServer(options: ServerOptions, secureConnectionListener?: (socket: PSKSocket) => void): Server;
export function nowMs(): number;

type PskServer = Server;

export namespace https {
  class Server extends http.Server {
    readonly pskServer: PskServer;
  }
  class Agent extends http.Agent {
    constructor(options?: http.AgentOptions & ConnectOptions | http.AgentOptions & Partial<ConnectOptions>);
  }
  type RequestOptions = http.RequestOptions & Partial<ConnectOptions>;
  function createServer(options: ServerOptions & http.ServerOptions,
                        requestListener?: http.RequestListener): Server;
  function request(options: RequestOptions | string | URL, cb?: (res: http.IncomingMessage) => void): http.ClientRequest;
  function request(url: string | URL, options: RequestOptions, cb?: (res: http.IncomingMessage) => void): http.ClientRequest;
  function get(options: RequestOptions | string | URL, cb?: (res: http.IncomingMessage) => void): http.ClientRequest;
  function get(url: string | URL, options: RequestOptions, cb?: (res: http.IncomingMessage) => void): http.ClientRequest;
}

export interface DtlsServerOptions extends ServerOptions {
  maxPeers?: number;
  idleTimeout?: number;
  mtu?: number;
  maxQueue?: number;
  cookies?: boolean;
  type?: 'udp4' | 'udp6';
  socket?: import('node:dgram').Socket;
}

export interface DtlsConnectOptions extends ConnectOptions {
  type?: 'udp4' | 'udp6';
  localAddress?: string;
  localPort?: number;
  mtu?: number;
  idleTimeout?: number;
  maxQueue?: number;
}

export namespace dtls {
  /** One DTLS association: an objectMode Duplex, one record per write()
   * and per 'data'. */
  class DTLSSocket extends stream.Duplex implements PskIdentity {
    readonly peerId: string | null;
    readonly kpsaId: string | null;
    readonly localId: string | null;
    readonly suite: string | null;
    readonly credential: boolean;
    readonly peerKind: number;
    originatorCheck(from: string | null | undefined, flags?: number | OriginatorFlags): number;
    bindAeId(aeId: string): void;
    exportKeyingMaterial(length: number, label: string, context?: Bytes | null): Buffer;
    readonly remoteAddress: string;
    readonly remotePort: number;
    readonly dropped: number;
    send(data: Bytes, cb?: (err?: Error | null) => void): boolean;
    close(cb?: () => void): void;
    getProtocol(): string | null;
  }
  type ServerOptions = DtlsServerOptions;
  class DTLSServer extends EventEmitter {
    readonly peers: Map<string, DTLSSocket>;
    readonly stats: { cookiesSent: number; accepted: number; dropped: number; replaced: number };
    readonly config: Config;
    maxPeers: number;
    idleTimeout: number;
    listen(port?: number, host?: string, cb?: () => void): this;
    address(): import('node:net').AddressInfo;
    close(cb?: () => void): this;
    ref(): this;
    unref(): this;
  }
  type ConnectOptions = DtlsConnectOptions;
  function createServer(options: ServerOptions, listener?: (peer: DTLSSocket) => void): DTLSServer;
  function connect(options: ConnectOptions, secureConnectListener?: () => void): DTLSSocket;
}

// The raw layer's free functions and constants.
export function strerror(code: number): string;
export function reason_name(reason: number): string;
export function version_string(): string;
export function version_number(): number;
export function backend_name(): string;
export function kpsa_id_validate(kpsaId: string): void;
export function idb_validate(idb: string): void;
export function ida_validate(ida: string): void;
export function originator_check(boundKind: number, boundId: string | null, localId: string,
                                 from: string | null, flags: number): number;
export const E_INVALID: number, E_NOMEM: number, E_AGAIN: number, E_CLOSED: number,
  E_FAILED: number, E_STATE: number, E_BUFFER: number, E_INTERNAL: number, E_KPSA_ID: number,
  E_KPSA_ID_LENGTH: number, E_KEY_LENGTH: number, E_IDA: number, E_IDB: number,
  E_ID_LENGTH: number, E_VALIDITY: number, E_DUPLICATE: number, E_NOT_FOUND: number,
  E_UNLOCKED: number, E_IO: number, E_KEYFILE_PERMS: number, E_KEYFILE_SYNTAX: number,
  E_KEYFILE_ENCODING: number, E_SUITE: number, E_NO_LOCAL_ID: number, E_BACKEND: number,
  E_LIMIT: number, E_UNSUPPORTED: number, E_PROTOCOL: number;
export const ROLE_INITIATOR: number, ROLE_RESPONDER: number, TRANSPORT_TLS: number,
  TRANSPORT_DTLS: number;
export const STATE_IDLE: number, STATE_HANDSHAKING: number, STATE_ESTABLISHED: number,
  STATE_CLOSED: number, STATE_FAILED: number;
export const REASON_NONE: number, REASON_UNKNOWN_IDENTITY: number, REASON_BAD_KEY: number,
  REASON_PEER_ALERT: number, REASON_PROTOCOL: number, REASON_TIMEOUT: number,
  REASON_EXPIRED: number, REASON_REVOKED: number, REASON_MISUSE: number,
  REASON_ID_MISMATCH: number, REASON_INTERNAL: number, REASON_RATE_LIMITED: number,
  REASON_LIMIT: number;
export const PEER_NONE: number, PEER_AE: number, PEER_CSE: number, PEER_CREDENTIAL: number;
export const ORIGINATOR_AE_CREATE: number, ORIGINATOR_ALLOW_UNSECURED_AE: number,
  ORIGINATOR_ACCEPT: number, ORIGINATOR_NOT_AUTHENTICATED: number,
  ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED: number;
