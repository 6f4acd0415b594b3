/**
 * TypeScript client of the SomaFractalMemory REST API (v2): the Python SDK's verbs, typed
 * results, errors carrying the service's stable `code`, and retries of 429 and 503 that
 * honour `Retry-After`. No runtime dependency beyond the platform's `fetch` (Node 18+,
 * browsers, Deno, Bun).
 *
 *   import { Memory } from "somafractalmemory";
 *   const memory = new Memory({ url: "http://127.0.0.1:10101" });
 *   await memory.remember("Alice prefers the window seat", { metadata: { user: "alice" } });
 *   for (const hit of (await memory.recall("where does Alice sit?")).memories) { ... }
 */

export type MemoryType = "episodic" | "semantic" | "summary";
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type Metadata = { [key: string]: Json };

/** A stored memory (or, when deduplicated, the one already stored with that content). */
export interface Stored {
  id: string;
  embedding_id: string;
  importance: number;
  created_at: string;
  recorded_at: string;
  key: string;
  valid_from: string;
  valid_until: string | null;
  expires_at: string | null;
  deduplicated: boolean;
  near_duplicates: { id: string; score: number }[];
  supersedes: string[];
  possible_conflicts: { id: string; score: number }[];
}

export interface MemoryRecord {
  id: string;
  namespace: string;
  type: MemoryType;
  content: string;
  importance: number;
  metadata: Metadata;
  embedding_id: string;
  created_at: string;
  updated_at: string;
  access_count: number;
  last_accessed_at: string | null;
  strength: number;
  level: number;
  span_end: string | null;
  archived_at: string | null;
  key: string;
  recorded_at: string;
  valid_from: string;
  valid_until: string | null;
  expires_at: string | null;
  status: "valid" | "expired" | "not_yet_valid" | "no_longer_valid";
}

export interface Hit {
  id: string;
  content: string;
  score: number;
  type: MemoryType;
  level: number;
  namespace: string;
  importance: number;
  metadata: Metadata;
  created_at: string;
  explain?: { [key: string]: Json } | null;
  children?: Related[] | null;
  parents?: Related[] | null;
}

export interface Related {
  id: string;
  content: string;
  type: string;
  level: number;
  created_at: string;
}

export interface Recall {
  memories: Hit[];
  latency_ms: number;
  mode: string;
  warnings: string[];
  hidden?: { id: string; reason: string }[] | null;
}

export interface Link {
  source: string;
  target: string;
  kind: string;
  weight: number;
}

export interface Graph {
  nodes: MemoryRecord[];
  edges: Link[];
  truncated: boolean;
}

export interface Job {
  id: string;
  kind: string;
  status: "queued" | "running" | "succeeded" | "failed";
  params: { [key: string]: Json };
  progress: { [key: string]: Json };
  result: { [key: string]: Json } | null;
  error: { [key: string]: Json } | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface Namespace {
  namespace: string;
  memories: number;
  archived: number;
  by_type: { [type: string]: number };
  by_level: { [level: string]: number };
  first: string | null;
  last: string | null;
}

export interface Purged {
  memories: number;
  links: number;
  vectors: number;
  parents_resummarized: number;
  parents_removed: number;
  neighbours_rewritten: number;
  cache_entries: number;
  jobs: number;
  namespaces: string[];
  scrubbed: boolean;
  dry_run: boolean;
  job_id: string | null;
}

export interface StoreOptions {
  namespace?: string;
  type?: MemoryType;
  importance?: number;
  metadata?: Metadata;
  created_at?: string | Date;
  dedupe?: boolean;
  key?: string;
  supersedes?: string[];
  valid_from?: string | Date;
  valid_until?: string | Date;
  expires_at?: string | Date;
  ttl_seconds?: number;
}

export interface RecallOptions {
  top_k?: number;
  namespace?: string;
  filters?: { [key: string]: Json };
  mode?: "hybrid" | "vector" | "lexical";
  types?: MemoryType[];
  levels?: number[];
  created_after?: string | Date;
  created_before?: string | Date;
  min_score?: number;
  explain?: boolean;
  expand?: "children" | "parents";
  zoom?: boolean;
  reinforce?: boolean;
  as_of?: string | Date;
}

export interface ListOptions {
  namespace?: string;
  types?: MemoryType[];
  archived?: boolean;
  pageSize?: number;
  as_of?: string | Date;
  include_invalid?: boolean;
  key?: string;
}

/** An error answer: the service's stable `code`, its `message` and `details`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: unknown = null,
  ) {
    super(`${status} ${code}: ${message}`);
    this.name = new.target.name;
  }
}
export class BadRequest extends ApiError {}
export class Unauthorized extends ApiError {}
export class Forbidden extends ApiError {}
export class NotFound extends ApiError {}
export class Conflict extends ApiError {}
export class RateLimited extends ApiError {}
export class Unavailable extends ApiError {}
export class ServerError extends ApiError {}

const BY_STATUS: { [status: number]: typeof ApiError } = {
  400: BadRequest,
  401: Unauthorized,
  403: Forbidden,
  404: NotFound,
  409: Conflict,
  413: BadRequest,
  422: BadRequest,
  429: RateLimited,
  503: Unavailable,
};

export interface Options {
  url?: string;
  apiKey?: string;
  /** Retries of 429 and 503 answers (and of requests that could not be sent). */
  retries?: number;
  /** First backoff in milliseconds, doubled each time (`Retry-After` wins when given). */
  backoffMs?: number;
  timeoutMs?: number;
  fetch?: typeof fetch;
}

type Query = { [name: string]: string | number | boolean | string[] | undefined | null };

function clean<T extends object>(body: T): { [key: string]: unknown } {
  const out: { [key: string]: unknown } = {};
  for (const [name, value] of Object.entries(body)) {
    if (value === undefined || value === null) continue;
    out[name] = value instanceof Date ? value.toISOString() : value;
  }
  return out;
}

function when(value: string | Date | undefined): string | undefined {
  return value instanceof Date ? value.toISOString() : value;
}

/** The service's API: one method per endpoint an agent calls. */
export class Memory {
  readonly url: string;
  private readonly apiKey?: string;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly timeoutMs: number;
  private readonly fetcher: typeof fetch;

  constructor(options: Options = {}) {
    this.url = (options.url ?? "http://127.0.0.1:10101").replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.retries = options.retries ?? 3;
    this.backoffMs = options.backoffMs ?? 250;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.fetcher = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** One request; its JSON (or text) answer, or the ApiError it stands for. */
  async request<T>(
    method: string,
    path: string,
    options: { body?: unknown; query?: Query; text?: string; raw?: boolean } = {},
  ): Promise<T> {
    const target = new URL(`${this.url}/api/v2${path}`);
    for (const [name, value] of Object.entries(options.query ?? {})) {
      if (value === undefined || value === null) continue;
      for (const item of Array.isArray(value) ? value : [value]) {
        target.searchParams.append(name, String(item));
      }
    }
    const headers: { [name: string]: string } = { "User-Agent": "somafractalmemory-ts" };
    if (this.apiKey) headers["Authorization"] = `Bearer ${this.apiKey}`;
    let body: string | undefined;
    if (options.text !== undefined) {
      headers["Content-Type"] = "application/x-ndjson";
      body = options.text;
    } else if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    for (let attempt = 0; ; attempt++) {
      let answer: Response;
      try {
        answer = await this.fetcher(target, {
          method,
          headers,
          body,
          signal: AbortSignal.timeout(this.timeoutMs),
        });
      } catch (error) {
        if (attempt >= this.retries) throw error;
        await sleep(this.backoffMs * 2 ** attempt);
        continue;
      }
      if ((answer.status === 429 || answer.status === 503) && attempt < this.retries) {
        const after = Number(answer.headers.get("Retry-After"));
        await sleep(Number.isFinite(after) && after > 0 ? after * 1000 : this.backoffMs * 2 ** attempt);
        continue;
      }
      if (answer.status >= 400) throw await failure(answer);
      return (options.raw ? await answer.text() : await answer.json()) as T;
    }
  }

  remember(content: string, options: StoreOptions = {}): Promise<Stored> {
    return this.request("POST", "/memory/store", { body: clean({ content, ...options }) });
  }

  /** Store many memories (texts or store bodies), sent 1,000 at a time. */
  async batch(items: (string | ({ content: string } & StoreOptions))[]): Promise<Stored[]> {
    const stored: Stored[] = [];
    for (let start = 0; start < items.length; start += 1000) {
      const memories = items
        .slice(start, start + 1000)
        .map((item) => clean(typeof item === "string" ? { content: item } : item));
      const answer = await this.request<{ memories: Stored[] }>("POST", "/memory/batch", {
        body: { memories },
      });
      stored.push(...answer.memories);
    }
    return stored;
  }

  recall(query: string, options: RecallOptions = {}): Promise<Recall> {
    return this.request("POST", "/memory/search", { body: clean({ query, ...options }) });
  }

  get(id: string): Promise<MemoryRecord> {
    return this.request("GET", `/memory/${encodeURIComponent(id)}`);
  }

  update(id: string, changes: Partial<StoreOptions> & { content?: string }): Promise<MemoryRecord> {
    return this.request("PATCH", `/memory/${encodeURIComponent(id)}`, { body: clean(changes) });
  }

  async forget(id: string): Promise<void> {
    await this.request("DELETE", `/memory/${encodeURIComponent(id)}`);
  }

  /** Every memory, newest first, a page at a time. */
  async *list(options: ListOptions = {}): AsyncGenerator<MemoryRecord> {
    let cursor: string | undefined;
    do {
      const page = await this.request<{ memories: MemoryRecord[]; next_cursor: string | null }>(
        "GET",
        "/memory",
        {
          query: {
            namespace: options.namespace,
            type: options.types,
            archived: options.archived ? "true" : undefined,
            limit: options.pageSize ?? 100,
            cursor,
            as_of: when(options.as_of),
            include_invalid: options.include_invalid ? "true" : undefined,
            key: options.key,
          },
        },
      );
      yield* page.memories;
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
  }

  history(id: string): Promise<MemoryRecord[]> {
    return this.memories(`/memory/${encodeURIComponent(id)}/history`);
  }

  link(source: string, target: string, kind = "related", weight = 1): Promise<Link> {
    return this.request("POST", `/memory/${encodeURIComponent(source)}/links`, {
      body: { target, kind, weight },
    });
  }

  async unlink(source: string, target: string, kind = "related"): Promise<void> {
    await this.request("DELETE", `/memory/${encodeURIComponent(source)}/links`, {
      query: { target, kind },
    });
  }

  async links(id: string): Promise<Link[]> {
    const answer = await this.request<{ links: Link[] }>("GET", `/memory/${encodeURIComponent(id)}/links`);
    return answer.links;
  }

  children(id: string): Promise<MemoryRecord[]> {
    return this.memories(`/memory/${encodeURIComponent(id)}/children`);
  }

  parents(id: string): Promise<MemoryRecord[]> {
    return this.memories(`/memory/${encodeURIComponent(id)}/parents`);
  }

  graph(id: string, options: { depth?: number; kinds?: string[] } = {}): Promise<Graph> {
    return this.request("GET", `/graph/${encodeURIComponent(id)}`, {
      query: { depth: options.depth, kinds: options.kinds },
    });
  }

  /** Consolidate episodes into semantic memories and summaries (a job; `wait` for it). */
  consolidate(namespace?: string, options: { wait?: boolean } = {}): Promise<Job> {
    return this.request("POST", "/memory/consolidate", {
      body: clean({ namespace, wait: options.wait ?? true }),
    });
  }

  job(id: string): Promise<Job> {
    return this.request("GET", `/jobs/${encodeURIComponent(id)}`);
  }

  async namespaces(): Promise<Namespace[]> {
    return (await this.request<{ namespaces: Namespace[] }>("GET", "/namespaces")).namespaces;
  }

  namespace(name: string): Promise<Namespace> {
    return this.request("GET", `/namespaces/${encodeURIComponent(name)}`);
  }

  deleteNamespace(name: string, options: { dryRun?: boolean } = {}): Promise<Purged> {
    return this.request("DELETE", `/namespaces/${encodeURIComponent(name)}`, {
      query: { dry_run: options.dryRun ? "true" : undefined },
    });
  }

  /** Erase every memory `filters` matches (`all`: everything in scope), with its traces. */
  purge(options: {
    namespace?: string;
    filters?: { [key: string]: Json };
    all?: boolean;
    dryRun?: boolean;
  }): Promise<Purged> {
    const { dryRun, ...rest } = options;
    return this.request("POST", "/memory/purge", { body: clean({ ...rest, dry_run: dryRun }) });
  }

  /** The caller's memories as JSON lines (the `sfm export` format). */
  export(namespaces: string[] = []): Promise<string> {
    return this.request("GET", "/export", { query: { namespace: namespaces }, raw: true });
  }

  /** Import an export into the caller's tenant (idempotent). */
  import(lines: string): Promise<{ memories: number; skipped: number; links: number; owed: number }> {
    return this.request("POST", "/import", { text: lines });
  }

  private async memories(path: string): Promise<MemoryRecord[]> {
    return (await this.request<{ memories: MemoryRecord[] }>("GET", path)).memories;
  }
}

async function failure(answer: Response): Promise<ApiError> {
  let code = "http_error";
  let message = answer.statusText;
  let details: unknown = null;
  try {
    const body = (await answer.json()) as { error?: { code?: string; message?: string; details?: unknown } };
    code = body.error?.code ?? code;
    message = body.error?.message ?? message;
    details = body.error?.details ?? null;
  } catch {
    // not the service's envelope (a proxy's page): keep the status line
  }
  const kind = BY_STATUS[answer.status] ?? (answer.status >= 500 ? ServerError : ApiError);
  return new kind(answer.status, code, message, details);
}

function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}
