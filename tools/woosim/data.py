"""Deterministic synthetic WordPress users, shaped as WooCommerce REST v3 customer objects.

The data is deliberately awkward, because real stores are: ids with gaps, every role (the list
endpoint hides non-customers by default), names in many scripts, missing modification dates,
billing emails shared between accounts, empty addresses and meta values of every JSON type.
Everything derives from one ``random.Random(seed)``, so a seed always yields the same store.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re
import time
import unicodedata
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any, NamedTuple, TypeVar

DEFAULT_BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
DEFAULT_TZ_OFFSET = "+02:00"
CUSTOM_ROLE = "wholesale_customer"
# WordPress registration order of the roles (the `role` enum lists them in this order).
REGISTERED_ROLES = (
    "administrator",
    "editor",
    "author",
    "contributor",
    "subscriber",
    "customer",
    "shop_manager",
    CUSTOM_ROLE,
)
BILLING_KEYS = (
    "first_name", "last_name", "company", "address_1", "address_2", "city",
    "postcode", "country", "state", "email", "phone",
)
SHIPPING_KEYS = (
    "first_name", "last_name", "company", "address_1", "address_2", "city",
    "postcode", "country", "state", "phone",
)
CUSTOMER_KEYS = (
    "id", "date_created", "date_created_gmt", "date_modified", "date_modified_gmt", "email",
    "first_name", "last_name", "role", "username", "billing", "shipping", "is_paying_customer",
    "avatar_url", "meta_data",
)

_SPAN_S = 6 * 365 * 86_400  # Registrations spread over six years before the base time.
_T = TypeVar("_T")
_TZ_RE = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


class GeneratedUser(NamedTuple):
    """A customer object plus the user facts the API does not show but its queries use."""

    customer: dict[str, Any]
    roles: tuple[str, ...]  # All roles; `customer["role"]` is the first, or "customer" if none.
    user_url: str


def parse_tz_offset(offset: str) -> int:
    """Seconds east of UTC for "+02:00", "-0330" or "Z"."""
    if offset in ("Z", "z", "UTC"):
        return 0
    match = _TZ_RE.match(offset.strip())
    if not match:
        raise ValueError(f"invalid timezone offset {offset!r}; use e.g. +02:00")
    sign, hours, minutes = match.groups()
    seconds = int(hours) * 3600 + int(minutes) * 60
    return -seconds if sign == "-" else seconds


def wp_date(epoch_s: float) -> str:
    """WooCommerce's date format: ``YYYY-MM-DDTHH:MM:SS``, no zone, no fraction."""
    days, seconds = divmod(int(epoch_s), 86_400)
    return _day(days) + _time_of_day(seconds)


@cache
def _day(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(days * 86_400))


@cache
def _time_of_day(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def avatar_url(email: str) -> str:
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    return f"https://secure.gravatar.com/avatar/{digest}?s=96&d=mm&r=g"


@cache
def _handle_part(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", ascii_fold(name))


def ascii_fold(text: str) -> str:
    """Accents removed, lowercased, ASCII only: "Zoë Ødegaard" -> "zoe degaard"."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


def generate_customers(
    count: int,
    seed: int,
    base_time: datetime | None = None,
    *,
    tz_offset: str = DEFAULT_TZ_OFFSET,
) -> list[dict[str, Any]]:
    """``count`` v3 customer objects (without ``_links``), identical for identical arguments."""
    return [user.customer for user in generate_users(count, seed, base_time, tz_offset=tz_offset)]


def generate_users(
    count: int,
    seed: int,
    base_time: datetime | None = None,
    *,
    tz_offset: str = DEFAULT_TZ_OFFSET,
) -> list[GeneratedUser]:
    """Like ``generate_customers`` but with each user's full role list and URL."""
    return list(iter_users(count, seed, base_time, tz_offset=tz_offset))


def iter_users(
    count: int,
    seed: int,
    base_time: datetime | None = None,
    *,
    tz_offset: str = DEFAULT_TZ_OFFSET,
) -> Iterator[GeneratedUser]:
    """``generate_users`` one at a time, so a consumer need not hold every dict at once."""
    if count < 0:
        raise ValueError("count must not be negative")
    generator = _Generator(seed, base_time or DEFAULT_BASE_TIME, parse_tz_offset(tz_offset))
    return generator.run(count)


# --- name and address material --------------------------------------------------------------

_LOCALES: tuple[tuple[float, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    # weight, first names, last names, countries
    (
        52,
        ("James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David",
         "Sarah", "Thabo", "Lerato", "Sipho", "Priya", "Liam", "Olivia", "Noah", "Emma", "Ava",
         "Chloe", "Jack", "Grace", "Mia", "Daniel", "Ruth", "Sam", "Alex", "Jo"),
        ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "O'Brien",
         "van der Merwe", "Nkosi", "Naidoo", "Botha", "Taylor", "Wilson", "Evans", "Thomas",
         "McDonald", "Smith-Jones", "Dlamini", "Pillay", "Walker", "Young", "King"),
        ("US", "GB", "ZA", "AU", "ZA", "ZA"),
    ),
    (
        7,
        ("Émilie", "François", "Hélène", "Jérôme", "Zoë", "Noël", "Chloé", "Léa", "Maël", "Anaïs",
         "Amélie", "Loïc"),
        ("Lefèvre", "Dubois", "Moreau", "Girard", "Bélanger", "Côté", "Dupont", "Lemaître",
         "Faure", "Rousseau"),
        ("FR", "FR", "BE", "CA"),
    ),
    (
        7,
        ("Jürgen", "Jörg", "Bärbel", "Günther", "Özlem", "Ute", "Lukas", "Sönke", "Käthe", "Anna"),
        ("Müller", "Schröder", "Weiß", "Groß", "Köhler", "Bäcker", "Schmidt", "Fischer", "Weber"),
        ("DE", "DE", "AT", "CH"),
    ),
    (
        7,
        ("José", "María", "Iñaki", "Begoña", "João", "Conceição", "Ángel", "Lucía", "Sofía",
         "Tomás"),
        ("Núñez", "Peña", "Ibáñez", "García", "Gonçalves", "Muñoz", "Fernández", "Rodríguez",
         "Simões"),
        ("ES", "ES", "PT", "MX", "BR"),
    ),
    (
        3,
        ("Søren", "Åsa", "Bjørn", "Ægir", "Sigríður", "Lærke", "Mikael"),
        ("Ødegaard", "Ångström", "Bjørnsson", "Kristjánsdóttir", "Lindqvist", "Næss"),
        ("SE", "NO", "DK", "IS"),
    ),
    (
        3,
        ("Łukasz", "Małgorzata", "Řehoř", "Zdeněk", "Agnieszka", "Jiří", "Žaneta"),
        ("Wałęsa", "Dvořák", "Świątek", "Nowak", "Kowalczyk", "Procházka", "Šťastný"),
        ("PL", "CZ"),
    ),
    (
        4,
        ("伟", "芳", "娜", "秀英", "敏", "静", "磊", "洋"),
        ("王", "李", "张", "刘", "陈", "杨", "黄", "欧阳"),
        ("CN", "TW", "SG"),
    ),
    (
        3,
        ("さくら", "太郎", "花子", "翔", "美咲", "健太", "ユイ"),
        ("佐藤", "鈴木", "高橋", "田中", "渡辺", "伊藤"),
        ("JP",),
    ),
    (2, ("민준", "서연", "지우", "하은", "도윤"), ("김", "이", "박", "최", "정"), ("KR",)),
    (
        3,
        ("محمد", "فاطمة", "أحمد", "مريم", "علي", "نور"),
        ("العلي", "حسن", "الخطيب", "منصور", "الحسيني"),
        ("AE", "SA", "EG"),
    ),
    (2, ("דוד", "שרה", "יוסף", "נועה", "מיכל"), ("כהן", "לוי", "מזרחי", "פרץ"), ("IL",)),
    (
        2,
        ("Дмитрий", "Анастасия", "Сергей", "Ольга", "Наталья"),
        ("Иванов", "Смирнова", "Кузнецов", "Попова"),
        ("RU", "UA"),
    ),
    (1, ("Thảo", "Minh", "Hương", "Đức"), ("Nguyễn", "Trần", "Lê", "Phạm"), ("VN",)),
    (1, ("Γιώργος", "Ελένη", "Νίκος"), ("Παπαδόπουλος", "Κωνσταντίνου"), ("GR", "CY")),
)
_EMOJI = ("🌸", "⭐", "🦄", "🎉", "🇿🇦", "☕", "💎", "🐼")

# country -> states, postcode pattern (# digit, A letter), cities, phone pattern
_COUNTRIES: dict[str, tuple[tuple[str, ...], str, tuple[str, ...], str]] = {
    "US": (("CA", "NY", "TX", "WA", "FL", "IL", "OR"), "#####", ("Springfield", "Portland",
           "Austin", "New York", "Seattle"), "(###) 555-####"),
    "GB": (("",), "A## #AA", ("London", "Manchester", "Bristol", "Leeds"), "+44 20 7946 0###"),
    "ZA": (("GP", "WC", "KZN", "EC"), "####", ("Johannesburg", "Cape Town", "Durban",
           "Gqeberha", "Pretoria"), "+27 82 555 ####"),
    "AU": (("NSW", "VIC", "QLD", "WA"), "####", ("Sydney", "Melbourne", "Brisbane"),
           "+61 4## ### ###"),
    "FR": (("",), "#####", ("Paris", "Lyon", "Besançon", "Orléans"), "+33 6 ## ## ## ##"),
    "BE": (("",), "####", ("Liège", "Bruxelles", "Namur"), "+32 4## ## ## ##"),
    "CA": (("QC", "ON", "BC"), "A#A #A#", ("Montréal", "Québec", "Toronto"), "+1 514 555 ####"),
    "DE": (("",), "#####", ("München", "Köln", "Düsseldorf", "Berlin"), "+49 30 ########"),
    "AT": (("",), "####", ("Wien", "Graz"), "+43 1 #######"),
    "CH": (("ZH", "GE", "BE"), "####", ("Zürich", "Genève"), "+41 44 ### ## ##"),
    "ES": (("M", "B", "V"), "#####", ("Madrid", "Barcelona", "A Coruña"), "+34 6## ### ###"),
    "PT": (("",), "####-###", ("Lisboa", "Porto"), "+351 9## ### ###"),
    "MX": (("CMX", "JAL"), "#####", ("Ciudad de México", "Guadalajara"), "+52 55 #### ####"),
    "BR": (("SP", "RJ"), "#####-###", ("São Paulo", "Rio de Janeiro"), "+55 11 9####-####"),
    "SE": (("",), "### ##", ("Göteborg", "Malmö", "Stockholm"), "+46 70 ### ## ##"),
    "NO": (("",), "####", ("Tromsø", "Oslo", "Bergen"), "+47 ### ## ###"),
    "DK": (("",), "####", ("København", "Århus"), "+45 ## ## ## ##"),
    "IS": (("",), "###", ("Reykjavík",), "+354 ### ####"),
    "PL": (("",), "##-###", ("Łódź", "Kraków", "Gdańsk"), "+48 ### ### ###"),
    "CZ": (("",), "### ##", ("Praha", "Brno", "Plzeň"), "+420 ### ### ###"),
    "CN": (("CN2", "CN19", "CN30"), "######", ("北京", "上海", "广州"), "+86 1## #### ####"),
    "TW": (("",), "###", ("台北", "高雄"), "+886 9## ### ###"),
    "SG": (("",), "######", ("Singapore",), "+65 #### ####"),
    "JP": (("JP13", "JP27", "JP14"), "###-####", ("東京", "大阪", "横浜"), "+81 90-####-####"),
    "KR": (("",), "#####", ("서울", "부산"), "+82 10-####-####"),
    "AE": (("",), "", ("Dubai", "دبي", "Abu Dhabi"), "+971 50 ### ####"),
    "SA": (("",), "#####", ("الرياض", "Jeddah"), "+966 5# ### ####"),
    "EG": (("",), "#####", ("القاهرة", "Alexandria"), "+20 10 #### ####"),
    "IL": (("",), "#######", ("תל אביב", "Jerusalem", "חיפה"), "+972 5#-###-####"),
    "RU": (("",), "######", ("Москва", "Санкт-Петербург"), "+7 9## ###-##-##"),
    "UA": (("",), "#####", ("Київ", "Львів"), "+380 ## ### ####"),
    "VN": (("",), "######", ("Hà Nội", "Hồ Chí Minh"), "+84 9# ### ####"),
    "GR": (("",), "### ##", ("Αθήνα", "Θεσσαλονίκη"), "+30 69# ### ####"),
    "CY": (("",), "####", ("Λευκωσία", "Limassol"), "+357 9# ######"),
}
_STREETS = (
    "Main Street", "Church Road", "Rue de la Paix", "Hauptstraße", "Calle Mayor", "Long Street",
    "Voortrekker Road", "Königsallee", "Avenida da Liberdade", "Strandvägen", "ul. Piotrkowska",
    "銀座通り", "Nguyễn Huệ", "Queen's Road", "Bree Street", "Jan Smuts Avenue", "Oak Lane",
)
_ADDRESS_2 = ("Apt 4B", "Unit 12", "Suite 300", "Flat 3", "2nd floor", "c/o Reception", "PO Box 77")
_COMPANIES = (
    "Acme Trading (Pty) Ltd", "Müller & Söhne GmbH", "株式会社サンプル", "Blue Sky Ventures",
    "Café Lumière SARL", "Smith & Co", "Nordlys AS", "Ubuntu Crafts CC", "O'Neill Bros",
)
_EMAIL_DOMAINS = (
    "example.com", "example.net", "example.org", "mail.example", "webmail.test",
    "inbox.example", "shop.example", "post.test",
)
_HANDLES = ("sunny", "blue.sky", "kitty", "dragon", "moon", "river", "lotus", "tiger", "maple")
_SHARED_BILLING = (
    "orders@acme.example", "accounts@family.example", "billing@bluesky.example", "ap@ubuntu.test",
)
_TAGS = ("vip", "newsletter", "wholesale", "b2b", "returning", "late-payer", "früh", "😀")
_LANGUAGES = ("en_ZA", "en_US", "fr_FR", "de_DE", "ja", "zh_CN", "ar", "he_IL", "pt_BR")

_NON_CUSTOMER_ROLES = (
    ("subscriber", 0.045), (CUSTOM_ROLE, 0.02), ("shop_manager", 0.004), ("editor", 0.003),
    ("author", 0.003), ("contributor", 0.003), ("administrator", 0.001),
)


class _Generator:
    """One pass over ``count`` users; all randomness from a single seeded ``Random``.

    Hot path: ``rand()`` and index arithmetic instead of ``choice``/``sample``, which keeps
    100,000 users within a few seconds.
    """

    def __init__(self, seed: int, base_time: datetime, offset_s: int) -> None:
        self.rng = random.Random(seed)
        self.rand = self.rng.random
        self.base = int(base_time.timestamp())
        self.offset_s = offset_s
        weights = [locale[0] for locale in _LOCALES]
        total = sum(weights)
        self.locale_cdf = [sum(weights[: i + 1]) / total for i in range(len(weights))]
        self.emails: set[str] = set()
        self.logins: set[str] = set()
        self.email_suffix: dict[str, int] = {}  # Last numeric suffix per colliding address.
        self.login_suffix: dict[str, int] = {}
        self.account_emails: list[str] = []
        self.meta_id = 10_000

    def pick(self, seq: Sequence[_T]) -> _T:
        return seq[int(self.rand() * len(seq))]

    def run(self, count: int) -> Iterator[GeneratedUser]:
        forced = self._forced_roles(count)
        registered = self._registration_times(count)
        user_id = 0
        for index in range(count):
            user_id += self._id_step(index)
            roles = forced[index] if index in forced else self._roles()
            yield self._user(user_id, roles, registered[index])

    # -- structure ---------------------------------------------------------------------------

    def _forced_roles(self, count: int) -> dict[int, tuple[str, ...]]:
        """User 1 is the site administrator; small stores still get one user of each role."""
        forced: dict[int, tuple[str, ...]] = {0: ("administrator",)} if count else {}
        extra = [
            ("subscriber",), (CUSTOM_ROLE,), ("shop_manager",), ("editor",), ("author",),
            ("contributor",), ("customer", "subscriber"), (),
        ]
        if count >= 4 * len(extra):
            indices = self.rng.sample(range(1, count), len(extra))
            forced.update(zip(indices, extra, strict=True))
        return forced

    def _registration_times(self, count: int) -> list[int]:
        """Ascending epoch seconds; 2% share the previous user's second (bulk imports)."""
        rand = self.rand
        steps = [0.0 if rand() < 0.02 else rand() * 2.0 for _ in range(count)]
        scale = (_SPAN_S - 86_400) / (sum(steps) or 1.0)
        start = self.base - _SPAN_S
        times: list[int] = []
        elapsed = 0.0
        for step in steps:
            elapsed += step
            times.append(start + int(elapsed * scale))
        return times

    def _id_step(self, index: int) -> int:
        if index == 0:
            return 1
        r = self.rand()
        if r < 0.85:
            return 1
        if r < 0.98:
            return 2 + int(self.rand() * 3)
        return 5 + int(self.rand() * 56)  # Deleted spam registrations leave holes.

    def _roles(self) -> tuple[str, ...]:
        r = self.rand()
        if r < 0.905:
            return ("customer",)
        r -= 0.905
        for role, share in _NON_CUSTOMER_ROLES:
            if r < share:
                return (role,)
            r -= share
        if r < 0.005:
            return ()  # A user with no role on this site: listed by role=all as "customer".
        if r < 0.015:
            return ("customer", "subscriber")
        return ("customer",)

    # -- one user ----------------------------------------------------------------------------

    def _user(self, user_id: int, roles: tuple[str, ...], registered: int) -> GeneratedUser:
        rand, pick = self.rand, self.pick
        firsts, lasts, countries = self._locale()
        first, last = pick(firsts), pick(lasts)
        r = rand()
        if r < 0.02:
            first, last = "", ""  # Registered with an email only.
        elif r < 0.03:
            first = f"{first} {pick(_EMOJI)}"
        elif r < 0.035:
            last = f"{last} {pick(_EMOJI)}"
        email = self._account_email(first, last)
        username = self._username(email)
        role = roles[0] if roles else "customer"
        is_customer = role == "customer"
        offset = self.offset_s

        modified: int | None = None
        if rand() >= (0.15 if is_customer else 0.4):
            modified = registered + int((self.base - registered) * rand() ** 0.5)

        billing = self._billing(first, last, email, countries, is_customer)
        customer: dict[str, Any] = {
            "id": user_id,
            "date_created": wp_date(registered + offset),
            "date_created_gmt": wp_date(registered),
            "date_modified": None if modified is None else wp_date(modified + offset),
            "date_modified_gmt": None if modified is None else wp_date(modified),
            "email": email,
            "first_name": first,
            "last_name": last,
            "role": role,
            "username": username,
            "billing": billing,
            "shipping": self._shipping(billing, countries),
            "is_paying_customer": is_customer and rand() < 0.55,
            "avatar_url": avatar_url(email),
            "meta_data": self._meta(registered, modified),
        }
        user_url = f"https://{username.replace('.', '-')}.example" if rand() < 0.02 else ""
        return GeneratedUser(customer, roles, user_url)

    def _locale(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        locale = _LOCALES[min(bisect.bisect(self.locale_cdf, self.rand()), len(_LOCALES) - 1)]
        return locale[1], locale[2], locale[3]

    def _account_email(self, first: str, last: str) -> str:
        """Unique (case-insensitively, as WordPress requires) and sometimes oddly cased."""
        rand, pick = self.rand, self.pick
        first_a, last_a = _handle_part(first), _handle_part(last)
        r = rand()
        if first_a and last_a and r < 0.5:
            local = f"{first_a}.{last_a}"
        elif first_a and last_a and r < 0.7:
            local = f"{first_a[0]}{last_a}{1 + int(rand() * 99)}"
        elif first_a and r < 0.8:
            local = f"{first_a}{1950 + int(rand() * 60)}"
        else:
            local = f"{pick(_HANDLES)}{1 + int(rand() * 9999)}"
        if rand() < 0.04:
            local = f"{local}+shop"
        domain = pick(_EMAIL_DOMAINS)
        if rand() < 0.03:
            local, domain = local.capitalize(), domain.upper()  # WordPress keeps the case.
        email = f"{local}@{domain}"
        key = email.lower()
        candidate = email
        while candidate.lower() in self.emails:
            n = self.email_suffix[key] = self.email_suffix.get(key, 1) + 1
            candidate = f"{local}{n}@{domain}"
        self.emails.add(candidate.lower())
        self.account_emails.append(candidate)
        return candidate

    def _username(self, email: str) -> str:
        """WooCommerce derives logins from the email; some sites use the email itself."""
        base = email if self.rand() < 0.1 else email.split("@", 1)[0].split("+", 1)[0]
        base = base.lower()
        login = base
        while login in self.logins:
            n = self.login_suffix[base] = self.login_suffix.get(base, 1) + 1
            login = f"{base}-{n}"
        self.logins.add(login)
        return login

    def _billing(
        self, first: str, last: str, email: str, countries: tuple[str, ...], is_customer: bool
    ) -> dict[str, str]:
        rand, pick = self.rand, self.pick
        r = rand()
        if r < (0.08 if is_customer else 0.6):
            return dict.fromkeys(BILLING_KEYS, "")
        country = pick(countries)
        states, postcode, cities, phone = _COUNTRIES[country]
        partial = r > 0.92  # Name and email only: an account that never checked out fully.
        e = rand()
        if e < 0.75:
            billing_email = email
        elif e < 0.83:
            billing_email = ""
        elif e < 0.92:
            billing_email = f"{_handle_part(last) or 'billing'}{int(rand() * 999)}@example.net"
        elif e < 0.96:
            billing_email = pick(self.account_emails)  # Another account's email.
        else:
            billing_email = pick(_SHARED_BILLING)
        if partial:
            return {
                **dict.fromkeys(BILLING_KEYS, ""),
                "first_name": first,
                "last_name": last,
                "email": billing_email,
            }
        return {
            "first_name": first,
            "last_name": last,
            "company": pick(_COMPANIES) if rand() < 0.15 else "",
            "address_1": f"{1 + int(rand() * 999)} {pick(_STREETS)}",
            "address_2": pick(_ADDRESS_2) if rand() < 0.2 else "",
            "city": pick(cities),
            "postcode": self._pattern(postcode),
            "country": country,
            "state": pick(states),
            "email": billing_email,
            "phone": "" if rand() < 0.2 else self._pattern(phone),
        }

    def _shipping(self, billing: dict[str, str], countries: tuple[str, ...]) -> dict[str, str]:
        rand, pick = self.rand, self.pick
        r = rand()
        if not billing["address_1"] or r < 0.25:
            return dict.fromkeys(SHIPPING_KEYS, "")
        if r < 0.85:
            shipping = {key: billing[key] for key in SHIPPING_KEYS}
            if rand() < 0.7:
                shipping["phone"] = ""  # Most checkouts never ask for a shipping phone.
            return shipping
        country = pick(countries)
        states, postcode, cities, phone = _COUNTRIES[country]
        return {
            "first_name": billing["first_name"] if rand() < 0.6 else "Gift",
            "last_name": billing["last_name"] if rand() < 0.6 else "Recipient",
            "company": pick(_COMPANIES) if rand() < 0.3 else "",
            "address_1": f"{1 + int(rand() * 999)} {pick(_STREETS)}",
            "address_2": pick(_ADDRESS_2) if rand() < 0.3 else "",
            "city": pick(cities),
            "postcode": self._pattern(postcode),
            "country": country,
            "state": pick(states),
            "phone": self._pattern(phone) if rand() < 0.3 else "",
        }

    def _pattern(self, pattern: str) -> str:
        """Fills ``#`` with digits and ``A`` with capitals, one draw per run of placeholders."""
        rand = self.rand
        out: list[str] = []
        for kind, text in _compiled(pattern):
            if kind == "#":
                out.append(str(int(rand() * 10 ** len(text))).zfill(len(text)))
            elif kind == "A":
                out.append("".join(_UPPER[int(rand() * 26)] for _ in text))
            else:
                out.append(text)
        return "".join(out)

    def _meta(self, registered: int, modified: int | None) -> list[dict[str, Any]]:
        """Plugin meta: strings, numbers, lists and objects, with ascending umeta ids."""
        rand = self.rand
        n = _META_COUNTS[int(rand() * len(_META_COUNTS))]
        entries: list[dict[str, Any]] = []
        kinds: set[int] = set()
        while len(kinds) < n:
            kinds.add(int(rand() * 9))
        for kind in sorted(kinds):
            self.meta_id += 1 + int(rand() * 40)
            key, value = self._meta_value(kind, registered, modified)
            entries.append({"id": self.meta_id, "key": key, "value": value})
        return entries

    def _meta_value(self, kind: int, registered: int, modified: int | None) -> tuple[str, Any]:
        rand, pick = self.rand, self.pick
        if kind == 0:
            return "wc_last_active", str((modified or registered) // 86_400 * 86_400)
        if kind == 1:
            return "mailchimp_woocommerce_is_subscribed", pick("01")
        if kind == 2:
            return "loyalty_points", int(rand() * 25_000)
        if kind == 3:
            return "store_credit", int(rand() * 50_000) / 100
        if kind == 4:
            return "marketing_tags", sorted({pick(_TAGS) for _ in range(int(rand() * 4))})
        if kind == 5:
            ids = {100 + int(rand() * 99_900) for _ in range(1 + int(rand() * 3))}
            return "_wcs_subscription_ids_cache", sorted(ids)
        if kind == 6:
            profile: dict[str, Any] = {
                "source": pick(("pos", "web", "import", "app")),
                "tier": pick(("bronze", "silver", "gold")),
                "since": 2012 + int(rand() * 13),
                "opt_in": rand() < 0.5,
                "notes": {"de": "Größe: M", "ja": "サイズ: M"},
            }
            return "customer_profile", profile
        if kind == 7:
            return "preferred_language", pick(_LANGUAGES)
        birthday = date(1950, 1, 1) + timedelta(days=int(rand() * 20_000))
        return "birthday", birthday.isoformat()


_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_META_COUNTS = (0, 0, 0, 1, 1, 2, 3, 4)


@cache
def _compiled(pattern: str) -> tuple[tuple[str, str], ...]:
    """``"A## #AA"`` -> runs of (kind, text): ("A","A"), ("#","##"), ("", " "), ..."""
    return tuple(
        (match.group()[0] if match.group()[0] in "#A" else "", match.group())
        for match in re.finditer(r"#+|A+|[^#A]+", pattern)
    )


# --- odd content (issue 8): customers a real store's database may well hold -----------------

ODD_KINDS = ("nul", "long_name", "unicode", "lone_surrogate", "deep_meta:N")
LONG_NAME_CHARS = 70_000
ODD_UNICODE = {
    "first_name": "👩🏽‍🚀 Zoë 𝕏",  # a ZWJ emoji sequence, a 4-byte mathematical letter
    "last_name": "שָׁלוֹם مرحبا \u200f𠜎",  # right-to-left scripts, a RTL mark, a CJK Ext-B
    "company": "🦊 株式会社 🇿🇦",
}
# Stands in for a value that json cannot write (too deep, a lone surrogate) until the record's
# JSON text is built; then the text is put in its place (see CustomerStore.make_odd).
ODD_MARK = "__woosim_odd_value__"


def parse_odd_kind(kind: str) -> tuple[str, int]:
    """``"deep_meta:200"`` -> ("deep_meta", 200); the other kinds carry no number."""
    name, _, number = kind.partition(":")
    if name == "deep_meta":
        if not number.isdigit() or not 1 <= int(number) <= 100_000:
            raise ValueError("deep_meta takes a depth, e.g. deep_meta:200 (1 to 100000)")
        return name, int(number)
    if name not in ODD_KINDS or number:
        raise ValueError(f"odd customer kinds are {', '.join(ODD_KINDS)}; got {kind!r}")
    return name, 0


def odd_customer(customer: dict[str, Any], kind: str) -> tuple[dict[str, Any], str | None]:
    """``customer`` made odd in the way ``kind`` names, and the JSON text that replaces
    :data:`ODD_MARK` in its serialisation (None when it holds no mark).

    - ``nul``: a NUL character in the first name and in billing's first address line
    - ``long_name``: a last name of 70,000 characters (two bytes each in UTF-8)
    - ``unicode``: emoji, right-to-left and 4-byte characters in names and company
    - ``lone_surrogate``: a last name with an unpaired UTF-16 surrogate (``\\udc80``)
    - ``deep_meta:N``: a ``meta_data`` entry whose value is nested N arrays deep, as plugins that
      store serialized structures produce
    """
    name, depth = parse_odd_kind(kind)
    odd = dict(customer)
    odd["billing"] = dict(customer.get("billing") or {})
    if name == "nul":
        odd["first_name"] = "Nul\u0000" + (customer.get("first_name") or "Name")
        odd["billing"]["address_1"] = (customer["billing"].get("address_1") or "") + "\u0000"
        return odd, None
    if name == "long_name":
        odd["last_name"] = "Ł" * LONG_NAME_CHARS
        return odd, None
    if name == "unicode":
        odd["first_name"], odd["last_name"] = ODD_UNICODE["first_name"], ODD_UNICODE["last_name"]
        odd["billing"]["company"] = ODD_UNICODE["company"]
        return odd, None
    if name == "lone_surrogate":
        odd["last_name"] = ODD_MARK
        return odd, '"D\\udc80e"'
    entry = {"id": 900_000 + depth, "key": "_serialized_structure", "value": ODD_MARK}
    odd["meta_data"] = [*(customer.get("meta_data") or []), entry]
    return odd, "[" * depth + '"deep"' + "]" * depth
