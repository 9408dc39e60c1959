/*
 * rebalance.pml: the journaled stock transfer and the sold-out proof of
 * src/stock/rebalance.rs, as a Promela model for spin. scripts/model-check
 * runs it, and its -DTWO_SCAN variant, which must fail.
 *
 * Modelled: NS = 3 shards of one campaign, TOTAL units, two service
 * instances. Each instance runs ROUNDS claims, one after the other, each on
 * a home shard of its choosing; a claim that finds its home shard dry
 * borrows (borrow_for). Each Redis command or script is one atomic step, as
 * in Redis; a pipeline of several commands is several steps (other
 * clients' commands run in between). The reads of one scan go to every
 * shard at once (try_join_all), so they run in any order.
 *
 * Redis state, per shard s: rem[s] (field `remaining`), ep[s] (field `xe`:
 * transfers that touched the shard); per transfer id t: jout[t], the
 * donor's journal entry (`xout[t] = "n:dest:..."`), and jin[t], the
 * destination's applied mark (`xin[t]`); claimed = units granted.
 *
 * Crashes: an instance may crash between any two of its Redis steps; the
 * restarted instance runs the startup recovery pass (the same pass as the
 * periodic recovery task and reconcile) alongside the other instance, and
 * serves nothing else. A crash between two reads, or between a read and a
 * write, is the same for everyone else as a crash just before the next
 * write, and a crash before a claim or a take leaves nothing behind, so the
 * model offers the crash before each write that finishes a started
 * transfer (give, journal delete): that covers a crash between every two
 * steps with far fewer states. CRASHES (default 1) crashes per run.
 *
 * Checked exhaustively, over every interleaving, crash point, spread of the
 * stock and choice of home shards:
 *   1. conservation, in every state: claimed + sum rem + the units of the
 *      journal entries not yet applied at their destination == TOTAL: what
 *      StockStore::shard_stats counts (a unit is counted once);
 *   2. NothingLeft is concluded only when every unit is granted: every
 *      shard empty and nothing in flight (units never come back once all is
 *      empty, so at the conclusion is as good as at any moment before);
 *   3. once every instance stopped, one recovery pass (the periodic task)
 *      leaves no journal entry and nothing in flight.
 *
 * -DTWO_SCAN: the proof before the epoch fix (two full scans that both saw
 * every shard empty and no journal entry; epochs not compared). spin finds
 * the unit both scans missed: it moves A -> B while a scan reads B before
 * the `give` and A after the journal delete, and again during the second
 * scan.
 */

#define NS 3
#ifndef TOTAL
#define TOTAL 2
#endif
#ifndef ROUNDS1
#define ROUNDS1 1     /* claims of the first instance */
#endif
#ifndef ROUNDS2
#define ROUNDS2 2     /* claims of the second instance */
#endif
#ifndef CRASHES
#define CRASHES 1     /* crashes per run */
#endif
#define MAXT 8        /* transfer ids */
#define ALLS 7        /* bit mask of every shard */

byte rem[NS];
byte ep[NS];
byte claimed;
byte nt;              /* transfer ids used so far */
byte jsrc[MAXT];
byte jdst[MAXT];
byte jn[MAXT];
bool jout[MAXT];
bool jin[MAXT];
byte crashes;
byte stopped;         /* instances done */
byte sold_out;        /* NothingLeft conclusions (shown in a trail) */

#define INFL(t) ((jout[t] && !jin[t]) -> jn[t] : 0)
#define UNITS (claimed + rem[0] + rem[1] + rem[2] + INFL(0) + INFL(1) + INFL(2) + INFL(3) + \
               INFL(4) + INFL(5) + INFL(6) + INFL(7))
/* Invariant 1, asserted in every step that writes (nothing else changes
 * the terms of the sum), so in every reachable state. */
#define CONSERVED assert(UNITS == TOTAL)

/* A crash of this instance here. */
#define CRASHPOINT if :: !down && crashes < CRASHES -> goto crashed :: true -> skip fi

/* lua/claim.lua on shard h: one unit if any. */
inline claim(h, ok) {
  d_step {
    if
    :: rem[h] > 0 -> rem[h]--; claimed++; ok = 1; printf("i%d claim on %d: granted\n", _pid, h)
    :: else -> ok = 0; printf("i%d claim on %d: dry\n", _pid, h)
    fi;
    CONSERVED
  }
}

/* lua/take.lua: up to `want` units out of d, journaled for h, bumping d's
 * epoch, in one step. */
inline take(d, h, want, id, n) {
  d_step {
    n = (want < rem[d] -> want : rem[d]);
    if
    :: n > 0 ->
       assert(nt < MAXT);
       id = nt; nt++;
       jsrc[id] = d; jdst[id] = h; jn[id] = n; jout[id] = 1;
       rem[d] = rem[d] - n;
       ep[d]++;
       printf("i%d take %d unit(s) from %d for %d: transfer t%d\n", _pid, n, d, h, id)
    :: else -> skip
    fi;
    CONSERVED
  }
}

/* lua/give.lua: applies transfer id at its destination once (HSETNX xin),
 * bumping the destination's epoch. */
inline give(id) {
  d_step {
    if
    :: !jin[id] -> jin[id] = 1; rem[jdst[id]] = rem[jdst[id]] + jn[id]; ep[jdst[id]]++;
       printf("i%d give t%d: shard %d remaining %d\n", _pid, id, jdst[id], rem[jdst[id]])
    :: else -> printf("i%d give t%d: applied before\n", _pid, id)
    fi;
    CONSERVED
  }
}

/* HDEL xout[id] on the donor. */
inline hdel(id) {
  d_step { jout[id] = 0; printf("i%d delete journal entry t%d\n", _pid, id); CONSERVED }
}

/* The journal entries of shard s, as a bit mask of transfer ids, into x. */
#define XOUT(s, x) \
    t = 0; \
    do \
    :: t < nt -> if :: jout[t] && jsrc[t] == s -> x = x | (1 << t) :: else -> skip fi; t++ \
    :: else -> break \
    od; \
    t = 0

/* read_shard's pipeline on shard s is two steps: HMGET remaining xe, then
 * HGETALL xout. The first scan keeps the epochs, the fullest other shard
 * (the last of equals, as max_by_key), the home shard's remaining and the
 * journal; the second only whether all was still empty (and, unless
 * TWO_SCAN, at the same epochs). */
#define RE1(s) d_step { \
    e1[s] = ep[s]; \
    printf("i%d scan 1 reads shard %d: remaining %d epoch %d\n", _pid, s, rem[s], ep[s]); \
    if \
    :: s == h -> homer = rem[s] \
    :: s != h && rem[s] > 0 && (best == NS || rem[s] >= bestr) -> best = s; bestr = rem[s] \
    :: else -> skip \
    fi; \
    rdre = rdre | (1 << s) }
#define X1(s) d_step { XOUT(s, x1); printf("i%d scan 1 reads journal of %d: %d\n", _pid, s, x1); rdx = rdx | (1 << s) }
#ifdef TWO_SCAN
#define RE2(s) d_step { \
    printf("i%d scan 2 reads shard %d: remaining %d\n", _pid, s, rem[s]); \
    if :: rem[s] != 0 -> empty2 = 0 :: else -> skip fi; rdre = rdre | (1 << s) }
#else
#define RE2(s) d_step { \
    printf("i%d scan 2 reads shard %d: remaining %d epoch %d\n", _pid, s, rem[s], ep[s]); \
    if :: rem[s] != 0 || ep[s] != e1[s] -> empty2 = 0 :: else -> skip fi; rdre = rdre | (1 << s) }
#endif
#define X2(s) d_step { XOUT(s, x2); printf("i%d scan 2 reads journal of %d: %d\n", _pid, s, x2); if :: x2 != 0 -> empty2 = 0 :: else -> skip fi; x2 = 0; rdx = rdx | (1 << s) }

/* A full scan: the three pipelines interleaved in any order. */
#define SCAN(RE, X) \
  rdre = 0; rdx = 0; \
  do \
  :: rdx == ALLS -> break \
  :: !(rdre & 1) -> RE(0) \
  :: !(rdre & 2) -> RE(1) \
  :: !(rdre & 4) -> RE(2) \
  :: (rdre & 1) && !(rdx & 1) -> X(0) \
  :: (rdre & 2) && !(rdx & 2) -> X(1) \
  :: (rdre & 4) && !(rdx & 4) -> X(2) \
  od; \
  rdre = 0; rdx = 0

/* Finishes every transfer of the mask x (recover_from): give, then delete
 * the journal entry. */
#define LAND(x) \
  i = 0; \
  do \
  :: i < MAXT -> \
     if \
     :: x & (1 << i) -> CRASHPOINT; give(i); CRASHPOINT; hdel(i) \
     :: else -> skip \
     fi; \
     i++ \
  :: else -> break \
  od; \
  i = 0

/* The recovery pass (startup, the periodic task, reconcile): every shard's
 * journal, in any order, then land what it held. */
#define XR(s) d_step { XOUT(s, x1); rdx = rdx | (1 << s) }
#define RECOVER \
  rdx = 0; x1 = 0; \
  do \
  :: rdx == ALLS -> break \
  :: !(rdx & 1) -> XR(0) \
  :: !(rdx & 2) -> XR(1) \
  :: !(rdx & 4) -> XR(2) \
  od; \
  rdx = 0; \
  LAND(x1)

proctype instance(byte rounds) {
  byte round, h, t, n, id, i;
  byte best, bestr, homer;   /* scan 1 */
  byte e1[NS];
  byte x1, x2, rdre, rdx;
  bool ok, empty2, down;

  goto serve;
crashed:
  /* A new process: nothing of the old one's memory is left. */
  skip;
  d_step {
    crashes++; down = 1; printf("i%d crashes and restarts\n", _pid);
    round = 0; h = 0; t = 0; n = 0; id = 0; i = 0; best = 0; bestr = 0; homer = 0;
    e1[0] = 0; e1[1] = 0; e1[2] = 0; x1 = 0; x2 = 0; rdre = 0; rdx = 0; ok = 0; empty2 = 0
  };
  RECOVER;
  goto stop;
serve:
  do
  :: round >= rounds -> break
  :: round < rounds ->
     atomic { round++; if :: h = 0 :: h = 1 :: h = 2 fi };
     claim(h, ok);
     if
     :: ok -> skip
     :: else ->
        /* borrow_for(h) */
        best = NS; x1 = 0;
        SCAN(RE1, X1);
        if
        :: best < NS ->
           /* half of the fullest other shard, at least one unit */
           take(best, h, (bestr + 1) / 2, id, n);
           if
           :: n > 0 -> CRASHPOINT; give(id); CRASHPOINT; hdel(id)
           :: else -> skip
           fi
        :: best == NS && x1 != 0 -> LAND(x1)
        :: best == NS && x1 == 0 && homer > 0 -> skip
        :: best == NS && x1 == 0 && homer == 0 ->
           empty2 = 1;
           SCAN(RE2, X2);
           if
           :: empty2 ->
              /* NothingLeft: broadcast, 410 from memory from now on. */
              d_step {
                sold_out++;
                printf("i%d NothingLeft: claimed %d of %d, remaining %d %d %d\n", _pid, claimed, TOTAL, rem[0], rem[1], rem[2]);
                assert(claimed == TOTAL)
              }
           :: else -> skip
           fi
        fi
     fi;
     d_step {
       h = 0; ok = 0; n = 0; id = 0; best = 0; bestr = 0; homer = 0;
       e1[0] = 0; e1[1] = 0; e1[2] = 0; x1 = 0; x2 = 0; empty2 = 0
     }
  od;
stop:
  stopped++
}

init {
  byte i, t, x1, rdx;
  bool down = 1;
  /* Every spread of the stock over two shards (the third is symmetric). */
  if
  :: rem[0] = TOTAL
  :: rem[0] = TOTAL - 1; rem[1] = 1
  fi;
  atomic { run instance(ROUNDS1); run instance(ROUNDS2) };
  /* Invariant 3: once both instances stopped, one recovery pass (as the
   * periodic task makes) leaves nothing in flight and no journal entry. */
  stopped == 2;
  RECOVER;
  t = 0;
  do
  :: t < MAXT -> assert(!jout[t]); t++
  :: else -> break
  od;
  assert(claimed + rem[0] + rem[1] + rem[2] == TOTAL);
  goto done;
crashed: /* never taken: this pass does not crash (down) */
  assert(false);
done:
  skip
}
