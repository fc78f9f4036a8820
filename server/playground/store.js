// store.js — the gallery's persistence: one IndexedDB object store of entries
// {id, created, kind, src (data URL), params}. Falls back to memory only when IndexedDB
// cannot be opened (some private modes), so the page still works.

const DB_NAME = "unclip-playground";
const STORE = "gallery";

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function openDb() {
  const req = indexedDB.open(DB_NAME, 1);
  req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: "id", autoIncrement: true });
  return request(req);
}

class MemoryStore {
  constructor() {
    this.rows = [];
    this.next = 1;
  }
  async all() { return [...this.rows]; }
  async add(entry) { const row = { ...entry, id: this.next++ }; this.rows.push(row); return row; }
  async remove(id) { this.rows = this.rows.filter((row) => row.id !== id); }
}

class IdbStore {
  constructor(db) { this.db = db; }
  objects(mode) { return this.db.transaction(STORE, mode).objectStore(STORE); }
  async all() { return request(this.objects("readonly").getAll()); }
  async add(entry) { return { ...entry, id: await request(this.objects("readwrite").add(entry)) }; }
  async remove(id) { await request(this.objects("readwrite").delete(id)); }
}

/** The gallery store: all() oldest first, add(entry) -> entry with its id, remove(id). */
export async function openStore() {
  try {
    return new IdbStore(await openDb());
  } catch (err) {
    console.warn("IndexedDB unavailable; the gallery lasts only this visit.", err);
    return new MemoryStore();
  }
}
