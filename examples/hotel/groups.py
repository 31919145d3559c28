"""Hotel platform domain: bookings, users, web sessions and electricity prices.

Four raw feeds in four shapes: the booking system exports CSV, the accounts
database is a SQL table, the website logs click events as JSON Lines, and the
energy supplier publishes hourly spot prices as Parquet (in EUR per kWh, which
the group keeps in EUR per MWh). Two groups are computed from others: weekly
vacancy per hotel (aggregation over time windows) and a session embedding per
user (dimensionality reduction of the click history). Age band (binning of the
date of birth) is computed as users are ingested.
"""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc

from features import (
    EVENT_TIME_TYPE,
    REASON_COLUMN,
    Aggregation,
    Feature,
    FeatureGroup,
    FeatureView,
    FileSource,
    Label,
    LabelEncoder,
    MinMaxScaler,
    OneHotEncoder,
    Selection,
    SqlSource,
    StandardScaler,
)
from hotel.binning import AGE_BANDS, age_band
from hotel.embedding import EMBEDDING_PREFIX, PAGES, SessionReducer, combine_counts, count_column, page_counts
from hotel.vacancy import combine_partials, week_start, weekly_partials, with_vacancy

LANDING = "landing/hotel"
DATABASE = "hotel"
EMBEDDING_SIZE = 4
COUNTRIES = ("AT", "BE", "CH", "CZ", "DE", "DK", "ES", "FI", "FR", "GB", "GR", "IE", "IT", "NL", "NO", "PL", "PT",
             "SE", "US", "CA", "JP", "CN", "BR", "IN", "AU")
ZONES = ("DE-LU", "FR", "NL")

HOTEL_BOOKINGS = FeatureGroup(
    name="hotel_bookings",
    version=1,
    description="One row per room booking, as exported by the booking system.",
    primary_key=("booking_id",),
    event_time="booked_at",
    features=(
        Feature("booking_id", pa.string(), "Booking reference."),
        Feature("hotel_id", pa.string(), "The booked hotel."),
        Feature("user_id", pa.string(), "The user who booked."),
        Feature("booked_at", EVENT_TIME_TYPE, "When the booking was made (UTC)."),
        Feature("check_in", pa.date32(), "Date of the first night."),
        Feature("nights", pa.int64(), "Nights booked.", min_value=1, max_value=14),
        Feature("rooms", pa.int64(), "Rooms booked.", min_value=1, max_value=9),
        Feature("hotel_rooms", pa.int64(), "The hotel's capacity in rooms.", min_value=5, max_value=800),
        Feature("status", pa.string(), "Booking status.", allowed_values=("confirmed", "cancelled")),
        Feature("price_eur", pa.float64(), "Total price in euros.", min_value=0, max_value=50_000),
    ),
    sources=(FileSource(name="booking_system_csv", format="csv", location=f"{LANDING}/bookings", pattern="*.csv"),),
    partition_by_event_date=True,
)


def _users_age_band(users: pa.Table) -> pa.Table:
    """Age band as of the row's event time; a birth date after it rejects the row."""
    birth, updated = users.column("birth_date"), users.column("updated_at")
    both = pc.and_(pc.is_valid(birth), pc.is_valid(updated))
    future = pc.and_(both, pc.greater(pc.cast(birth, pa.timestamp("us", tz="UTC")), updated))
    usable = pc.and_(both, pc.invert(future))
    null_dates = pa.nulls(users.num_rows, birth.type)
    bands = age_band(pc.if_else(usable, birth, null_dates), pc.if_else(usable, updated, pa.nulls(users.num_rows, updated.type)))
    reason = pc.if_else(future, pa.scalar("feature 'birth_date' is after the row's event time 'updated_at'"),
                        pa.scalar(None, pa.string()))
    return pa.table({"age_band": bands, REASON_COLUMN: reason})


HOTEL_USERS = FeatureGroup(
    name="hotel_users",
    version=1,
    description="One row per user account change: date of birth, home country, age band.",
    primary_key=("user_id",),
    event_time="updated_at",
    features=(
        Feature("user_id", pa.string(), "User reference."),
        Feature("updated_at", EVENT_TIME_TYPE, "When the account row was written (UTC)."),
        Feature("birth_date", pa.date32(), "Date of birth."),
        Feature("age_band", pa.string(), "Age band at updated_at, binned from birth_date.", allowed_values=AGE_BANDS,
                computed=True),
        Feature("home_country", pa.string(), "Home country (ISO 3166 alpha-2).", allowed_values=COUNTRIES),
        Feature("accessibility_needs", pa.bool_(),
                "Asked for step-free access or adapted rooms: health information, so sensitive.", sensitive=True),
    ),
    sources=(SqlSource(name="accounts_db", database=DATABASE, table="users", watermark="updated_at", row_id="row_id",
                       columns={"user_id": "user_ref", "home_country": "country"}),),
    compute=_users_age_band,
    online=True,
)

HOTEL_SESSIONS = FeatureGroup(
    name="hotel_web_sessions",
    version=1,
    description="One row per click on the website, logged per session.",
    primary_key=("event_id",),
    event_time="clicked_at",
    features=(
        Feature("event_id", pa.string(), "Click event id."),
        Feature("clicked_at", EVENT_TIME_TYPE, "When the click happened (UTC)."),
        Feature("user_id", pa.string(), "Signed-in user."),
        Feature("session_id", pa.string(), "Browser session."),
        Feature("page", pa.string(), "Kind of page clicked.", allowed_values=PAGES),
        Feature("dwell_seconds", pa.float64(), "Seconds spent on the page.", min_value=0, max_value=3600),
    ),
    sources=(FileSource(name="web_clicks_jsonl", format="jsonl", location=f"{LANDING}/sessions", pattern="*.jsonl",
                        columns={"event_id": "id", "clicked_at": "ts", "user_id": "user", "session_id": "session"}),),
    partition_by_event_date=True,
)

ELECTRICITY_PRICES = FeatureGroup(
    name="electricity_prices",
    version=1,
    description="Hourly day-ahead spot price of electricity per bidding zone.",
    primary_key=("zone",),
    event_time="hour_start",
    features=(
        Feature("zone", pa.string(), "Bidding zone.", allowed_values=ZONES),
        Feature("hour_start", EVENT_TIME_TYPE, "Start of the delivery hour (UTC)."),
        Feature("price_eur_mwh", pa.float64(), "Spot price in EUR per MWh (can be negative).",
                min_value=-500, max_value=4000),
    ),
    sources=(FileSource(name="spot_prices_parquet", format="parquet", location=f"{LANDING}/electricity",
                        pattern="*.parquet",
                        columns={"zone": "bidding_zone", "hour_start": "delivery_start", "price_eur_mwh": "price_eur_kwh"},
                        scale={"price_eur_mwh": 1000.0}),),
    online=True,
)

HOTEL_WEEKLY_VACANCY = FeatureGroup(
    name="hotel_weekly_vacancy",
    version=2,
    description="Per hotel and ISO week: booked room-nights of confirmed bookings and the vacancy level.",
    primary_key=("hotel_id", "week_start"),
    event_time="as_of",
    features=(
        Feature("hotel_id", pa.string(), "The hotel."),
        Feature("week_start", pa.date32(), "Monday of the week."),
        Feature("as_of", EVENT_TIME_TYPE, "End of the hour the totals are as of: every booking made before it."),
        Feature("booked_room_nights", pa.int64(), "Room-nights booked in the week.", min_value=0),
        Feature("bookings", pa.int64(), "Confirmed bookings with a night in the week.", min_value=0),
        Feature("hotel_rooms", pa.int64(), "Capacity in rooms.", min_value=1),
        Feature("vacancy", pa.float64(), "Share of the week's room-nights not booked, 0 to 1.", min_value=0, max_value=1),
    ),
    aggregation=Aggregation(upstream=HOTEL_BOOKINGS, partial=weekly_partials, combine=combine_partials,
                            finish=with_vacancy, granularity=timedelta(hours=1)),
    online=True,
)


def _with_embedding(counts: pa.Table, reducer: SessionReducer) -> pa.Table:
    embedding = reducer.transform(counts)
    return counts.join(embedding, keys="user_id", join_type="inner")


USER_SESSION_EMBEDDING = FeatureGroup(
    name="user_session_embedding",
    version=2,
    description=f"Per user: clicks per page kind over their whole history and a {EMBEDDING_SIZE}-number "
                "embedding of that mix (TruncatedSVD fitted on the history, stored as JSON with this version).",
    primary_key=("user_id",),
    event_time="as_of",
    features=(
        Feature("user_id", pa.string(), "User reference."),
        Feature("as_of", EVENT_TIME_TYPE, "End of the hour the counts are as of: every click before it."),
        *(Feature(count_column(page), pa.int64(), f"Clicks on {page.replace('_', ' ')} pages.", min_value=0)
          for page in PAGES),
        *(Feature(f"{EMBEDDING_PREFIX}{i}", pa.float64(), f"Session embedding component {i}.")
          for i in range(EMBEDDING_SIZE)),
    ),
    aggregation=Aggregation(upstream=HOTEL_SESSIONS, partial=page_counts, combine=combine_counts,
                            finish=_with_embedding, reducer=lambda: SessionReducer(components=EMBEDDING_SIZE, seed=0),
                            reducer_from_json=SessionReducer.from_json, granularity=timedelta(hours=1)),
    online=True,
)


def days_until_check_in(check_in: pa.Array, at: pa.Array) -> pa.Array:
    """On-demand feature: whole days from the request instant's UTC date to check-in (negative once past).

    Computed when asked, never stored, since it changes every day; training and serving will call it with the
    label's or the request's time (not yet part of a view).
    """
    request_day = pc.cast(pc.cast(pc.floor_temporal(at, unit="day"), pa.timestamp("s", tz="UTC")), pa.date32())
    return pc.cast(pc.subtract(pc.cast(check_in, pa.int32()), pc.cast(request_day, pa.int32())), pa.int64())


ON_DEMAND = {"days_until_check_in": days_until_check_in}

FEATURE_GROUPS = [HOTEL_BOOKINGS, HOTEL_USERS, HOTEL_SESSIONS, ELECTRICITY_PRICES, HOTEL_WEEKLY_VACANCY,
                  USER_SESSION_EMBEDDING]


def zone_of_hotel(hotel_id: pa.Array) -> pa.Array:
    """The electricity bidding zone a hotel buys in (hotel metadata: h-001 DE-LU, h-002 FR, h-003 NL, ...)."""
    number = pc.cast(pc.utf8_slice_codeunits(hotel_id, 2), pa.int64())
    return pc.take(pa.array(ZONES), pc.cast(pc.subtract(number, 1), pa.int64()).to_numpy(zero_copy_only=False) % len(ZONES))


def _booking_label_columns(bookings: pa.Table) -> pa.Table:
    """What a booking's features join on: the stay's week and the hotel's electricity zone."""
    return bookings.append_column("week_start", week_start(bookings.column("check_in").combine_chunks())) \
        .append_column("zone", zone_of_hotel(bookings.column("hotel_id").combine_chunks()))


BOOKING_CANCELLATION = FeatureView(
    name="booking_cancellation",
    version=1,
    description="Will a booking be cancelled? Joined as of the moment of booking: the stay week's vacancy, the "
                "user's profile and browsing, and the hour's electricity price.",
    label=Label(group=HOTEL_BOOKINGS, target="status", columns=("booking_id", "user_id", "hotel_id", "week_start", "zone"),
                derive=_booking_label_columns, reads=("check_in",)),
    selections=(
        Selection(HOTEL_WEEKLY_VACANCY, ("vacancy", "booked_room_nights"),
                  join_keys={"hotel_id": "hotel_id", "week_start": "week_start"}),
        Selection(HOTEL_USERS, ("age_band", "home_country", "accessibility_needs"), join_keys={"user_id": "user_id"}),
        Selection(USER_SESSION_EMBEDDING, tuple(f"{EMBEDDING_PREFIX}{i}" for i in range(EMBEDDING_SIZE)),
                  join_keys={"user_id": "user_id"}),
        Selection(ELECTRICITY_PRICES, ("price_eur_mwh",), join_keys={"zone": "zone"}, ttl=timedelta(hours=2)),
    ),
    transforms=(MinMaxScaler("price_eur_mwh"), OneHotEncoder("home_country", unknown="other"),
                OneHotEncoder("age_band", unknown="ignore"), StandardScaler("booked_room_nights"), LabelEncoder("status")),
    sensitive_allowed={
        "hotel_users.accessibility_needs":
            "Used only to audit that cancellations of step-free rooms are not predicted differently; "
            "approved for that audit, not for pricing or ranking.",
    },
)

FEATURE_VIEWS = [BOOKING_CANCELLATION]
